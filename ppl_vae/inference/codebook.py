r"""What a VQ-VAE is measured by: reconstruction error, codebook usage perplexity, dead codes.

The importance-sampled log p(x) of :func:`~ppl_vae.inference.evaluate.evaluate` means nothing for a
deterministic guide (every "sample" is the same point), so a VQ-VAE is evaluated by these instead:

- ``recon_nll``: :math:`-\log p(x \mid z_q(x))` in nats per data point; for a Bernoulli likelihood this is the
  binary cross-entropy summed over pixels (BCE nats per image);
- ``recon_mse``: the mean over pixels of :math:`(\mathbb{E}[x \mid z_q(x)] - x)^2`;
- ``perplexity``: :math:`\exp(-\sum_k p_k \log p_k)` with :math:`p_k` the share of all code positions of all
  data points assigned to code k (K when every code is used equally, 1 when one code takes all);
- ``dead_codes``: how many of the K codes no position of any data point is assigned to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import DataError
from ..models.vqvae import VQVAE, VQVAEGuide
from ..schema import documented
from .evaluate import eval_mode
from .reconstruction import reconstruction_terms

__all__ = ["CodebookReport", "code_counts", "perplexity", "dead_codes", "codebook_report", "is_vqvae"]


@documented
@dataclass(frozen=True)
class CodebookReport:
    """A VQ-VAE's numbers on a data set (see :mod:`ppl_vae.inference.codebook`)."""

    recon_nll: float  #: -log p(x | z_q(x)), nats per data point (BCE nats per image for a Bernoulli likelihood)
    recon_mse: float  #: mean squared error per pixel of the reconstruction mean
    perplexity: float  #: exp of the entropy of the code usage
    dead_codes: int  #: codes used by no position of any data point
    num_codes: int  #: K
    num_points: int  #: data points measured
    likelihood: str  #: the likelihood's registry name

    def as_dict(self) -> dict:
        return asdict(self)


def is_vqvae(model, guide) -> bool:
    """Whether ``model`` and ``guide`` are a :class:`~ppl_vae.models.vqvae.VQVAE` and its guide."""
    return isinstance(model, VQVAE) and isinstance(guide, VQVAEGuide)


def perplexity(counts: torch.Tensor) -> float:
    """``exp(-sum p log p)`` of the code usage ``counts`` ``(K,)`` (unused codes contribute 0)."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def dead_codes(counts: torch.Tensor) -> int:
    """How many codes have a count of 0."""
    return int((counts == 0).sum())


def code_counts(guide: VQVAEGuide, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """How many positions of the data points ``x`` are assigned to each code, ``(K,)``."""
    counts = torch.zeros(guide.model.config.num_codes, dtype=torch.long, device=x.device)
    with eval_mode(guide):
        for start in range(0, x.shape[0], batch_size):
            _, codes, _ = guide.quantize(x[start : start + batch_size])
            counts += torch.bincount(codes.reshape(-1), minlength=counts.numel())
    return counts


def _reconstruction_errors(model: VQVAE, guide: VQVAEGuide, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per data point: -log p(x | z_q) and the mean squared error per pixel of the reconstruction mean."""
    nll, mean = reconstruction_terms(model, guide, x)
    return nll, (mean.to(x.dtype) - x).pow(2).reshape(x.shape[0], -1).mean(-1)


def codebook_report(model: VQVAE, guide: VQVAEGuide, x: torch.Tensor, batch_size: int = 500) -> CodebookReport:
    """Reconstruction error, code usage perplexity and dead codes of a VQ-VAE on the data ``x``
    (modules in eval mode, no gradients, parameters untouched).

    :raises ValueError: for a model and guide that are not a VQ-VAE.
    :raises DataError: for an empty ``x``.
    """
    if not is_vqvae(model, guide):
        raise ValueError(f"codebook_report needs a vqvae model and guide, got {type(model).__name__} and {type(guide).__name__}")
    if x.shape[0] == 0:
        raise DataError("cannot evaluate on an empty data set")
    nll, mse = [], []
    with eval_mode(model, guide):
        for start in range(0, x.shape[0], batch_size):
            a, b = _reconstruction_errors(model, guide, x[start : start + batch_size])
            nll.append(a.double())
            mse.append(b.double())
    counts = code_counts(guide, x, batch_size)
    return CodebookReport(
        recon_nll=float(torch.cat(nll).mean()), recon_mse=float(torch.cat(mse).mean()), perplexity=perplexity(counts),
        dead_codes=dead_codes(counts), num_codes=counts.numel(), num_points=x.shape[0], likelihood=model.likelihood.name,
    )
