r"""Input corruption for denoising autoencoders: the guide encodes a corrupted ``x``, the model scores the clean one.

The bound of a denoising autoencoder (Vincent et al. 2008) or a denoising VAE (Im et al. 2017) is

.. math::

    \mathbb{E}_{\tilde x \sim c(\tilde x | x)}\,\mathbb{E}_{z \sim q(z | \tilde x)}
    \left[\log p(x | z) + \log p(z) - \log q(z | \tilde x)\right],

so only the guide's input changes. A corruption is chosen by ``kind`` from :data:`CORRUPTIONS`:

============== ===================================================================
kind           what each input element becomes
============== ===================================================================
masking        0 with probability ``rate``, else itself
gaussian       itself plus Normal noise of standard deviation ``rate``, clipped to [0, 1]
salt_and_pepper  with probability ``rate``, 0 or 1 (equally likely), else itself
============== ===================================================================

The data of ppl_vae lie in [0, 1] (grey levels or binary pixels); that is the range clipped to.

The corruption is drawn from torch's global random number generator, which ``fit`` seeds and keeps in every
checkpoint, so a resumed fit draws the same corruptions as an uninterrupted one. It applies only while the
guide is in training mode (``guide.training``): ``fit`` trains in that mode, and every tool that reads a
trained guide (``evaluate``, reconstructions, ``explore``) switches it to eval mode, so they see clean input.

Two ways in:

- the ``amortized`` guide's option ``corruption: {kind: masking, rate: 0.3}`` (see
  :class:`~ppl_vae.guides.amortized.AmortizedGuideConfig`);
- :class:`CorruptedGuide`, a wrapper around any guide, a module or a Pyro function, for guides written in
  Python.

References

- Vincent, P., Larochelle, H., Bengio, Y. & Manzagol, P.-A. (2008). Extracting and Composing Robust Features
  with Denoising Autoencoders. ICML.
- Im, D. J., Ahn, S., Memisevic, R. & Bengio, Y. (2017). Denoising Criterion for Variational Auto-Encoding
  Framework. AAAI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from pyro.nn import PyroModule

from ..schema import NON_NEGATIVE, check_fields, documented, number_in, one_of

__all__ = ["CORRUPTIONS", "Corrupts", "CorruptionConfig", "CorruptedGuide", "corrupt"]


def _masking(x: torch.Tensor, rate: float) -> torch.Tensor:
    keep = torch.rand_like(x, dtype=torch.float) >= rate
    return x * keep.to(x.dtype)


def _gaussian(x: torch.Tensor, rate: float) -> torch.Tensor:
    return (x + rate * torch.randn_like(x, dtype=torch.float).to(x.dtype)).clamp(0.0, 1.0)


def _salt_and_pepper(x: torch.Tensor, rate: float) -> torch.Tensor:
    u = torch.rand_like(x, dtype=torch.float)
    # u < rate: corrupted; of those, the lower half pepper (0) and the upper half salt (1)
    salt = (u < rate) & (u >= rate / 2)
    pepper = u < rate / 2
    return torch.where(salt, torch.ones_like(x), torch.where(pepper, torch.zeros_like(x), x))


#: Registry of corruptions: ``kind -> corrupt(x, rate)``.
CORRUPTIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "masking": _masking,
    "gaussian": _gaussian,
    "salt_and_pepper": _salt_and_pepper,
}


@documented
@dataclass(frozen=True)
class CorruptionConfig:
    """A corruption of the guide's input (the ``corruption:`` option of a guide)."""

    #: masking, gaussian or salt_and_pepper (ppl_vae.guides.corruption.CORRUPTIONS)
    kind: str = "masking"
    #: masking and salt_and_pepper: the probability an element is corrupted; gaussian: the noise's std
    rate: float = 0.3

    def __post_init__(self) -> None:
        rate = NON_NEGATIVE if self.kind == "gaussian" else number_in(0, 1)
        check_fields(self, "guide.corruption", kind=one_of(CORRUPTIONS), rate=rate)


@runtime_checkable
class Corrupts(Protocol):
    """A guide that corrupts its input in training (:class:`CorruptedGuide`, or the ``amortized`` guide, whose
    ``corruption`` is None when it does not); ask with :func:`ppl_vae.contract.capability`."""

    corruption: CorruptionConfig | None


def corrupt(x: torch.Tensor, config: CorruptionConfig | None) -> torch.Tensor:
    """``x`` with the corruption ``config`` applied (``x`` itself for None), same shape, dtype and device."""
    if config is None:
        return x
    return CORRUPTIONS[config.kind](x, float(config.rate))


class CorruptedGuide(PyroModule):
    """Any guide, fed a corrupted ``x`` in training mode and the clean ``x`` in eval mode.

    The model is left alone, so it scores the clean data: with a stochastic guide this is the denoising VAE,
    with a point-mass guide the denoising autoencoder.

    :param guide: a guide module or a Pyro function ``guide(x, y=None)``.
    :param CorruptionConfig config: the corruption.
    """

    def __init__(self, guide: Any, config: CorruptionConfig) -> None:
        super().__init__()
        self.guide = guide
        self.corruption = config

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        x = corrupt(x, self.corruption) if self.training else x
        # a function guide may leave y out of its signature (see ppl_vae.contract)
        return self.guide(x) if y is None else self.guide(x, y)
