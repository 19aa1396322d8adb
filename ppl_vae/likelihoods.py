"""Observation distributions p(x | decoder output), chosen once, in one place.

Every model that observes data picks its likelihood here by name, so the
choice between Bernoulli, Normal, ... is never re-implemented inside a model.
A likelihood is a small ``nn.Module`` (it may own learned parameters such as
a per-pixel scale) that maps a decoder's flat output to a Pyro distribution
whose event shape is the data's shape.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .autoregressive import PixelCNNDistribution, image_shape_of
from .families import MIN_SCALE, inverse_softplus
from .nets import check_choice
from .pixelcnn import GatedPixelCNN, PixelCNNConfig
from .schema import POSITIVE, check_value

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "BernoulliLikelihood",
    "IndependentBernoulli",
    "NormalLikelihood",
    "LearnedNormalLikelihood",
    "ContinuousBernoulliLikelihood",
    "Categorical256Likelihood",
    "PixelCNNLikelihood",
    "make_likelihood",
]


class Likelihood(nn.Module):
    """Base class: ``forward(out)`` returns p(x | out) with event shape ``x_shape``.

    :param tuple x_shape: the shape of one observation (e.g. ``(784,)`` or ``(1, 28, 28)``).
    """

    #: registry name
    name: ClassVar[str] = ""
    #: decoder outputs per observed element (e.g. 256 logits for a categorical pixel)
    params_per_element: ClassVar[int] = 1
    #: whether the observations must be exactly 0 or 1
    requires_binary: ClassVar[bool] = False
    #: what a pixel's value is in units of [0, 1] images (255 for grey levels 0..255), for figures
    pixel_scale: float = 1.0

    def __init__(self, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.num_elements = math.prod(self.x_shape)

    @property
    def num_outputs(self) -> int:
        """How many numbers the decoder must produce per observation."""
        return self.params_per_element * self.num_elements

    def _unflatten(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[-1] != self.num_outputs:
            raise ValueError(
                f"{self.name} likelihood expected decoder outputs of size {self.num_outputs}, "
                f"got shape {tuple(out.shape)}"
            )
        shape = self.x_shape if self.params_per_element == 1 else (*self.x_shape, self.params_per_element)
        return out.reshape(*out.shape[:-1], *shape)

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Map data as stored (floats in [0, 1]) to the distribution's support."""
        return x

    def check_data(self, x: torch.Tensor, *, what: str = "data", binarized: bool = False) -> None:
        """Raise ``ValueError`` if ``x`` lies outside the support of this likelihood.

        :param bool binarized: the data will be binarized before it is observed
            (dynamic binarization), so only its range matters.
        """
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{self.name} likelihood expects {what} in [0, 1], got values in "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]"
            )

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(n)`` with a log-density that sums the cross-entropy before negating it.

    The same values as ``Independent(Bernoulli)``, one pass over the image fewer in the forward and in the
    backward pass (PyTorch's Bernoulli negates the per-pixel cross-entropy first); at batch 1024 that is
    a few percent of a step of the MNIST VAE on a CPU.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.base_dist.logits
        logits, value = torch.broadcast_tensors(logits, value)
        dims = tuple(range(-self.reinterpreted_batch_ndims, 0))
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(dims)


class BernoulliLikelihood(Likelihood):
    """x ~ Bernoulli(logits=out), for binary images.

    :param bool allow_nonbinary: accept grey levels in [0, 1] as "soft" targets.
        This is an improper likelihood (its normaliser is wrong), so it must be
        asked for explicitly. Defaults to False.
    :param str option_key: the config key that sets ``allow_nonbinary`` for the model at hand, named in
        the error for grey-level data. Defaults to ``"allow_nonbinary"``.
    """

    name = "bernoulli"
    requires_binary = True

    def __init__(self, x_shape: tuple[int, ...], allow_nonbinary: bool = False, option_key: str = "allow_nonbinary") -> None:
        super().__init__(x_shape)
        self.allow_nonbinary = allow_nonbinary
        self.option_key = option_key

    def check_data(self, x: torch.Tensor, *, what: str = "data", binarized: bool = False) -> None:
        super().check_data(x, what=what)
        if not binarized and not self.allow_nonbinary and x.numel() and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"bernoulli likelihood needs binary {what} (0 or 1), but it holds grey levels; "
                "binarize it (data.binarize: dynamic or static), choose another likelihood "
                f"(normal, continuous_bernoulli, categorical256), or set {self.option_key}: true "
                "to accept an improper Bernoulli likelihood"
            )

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        logits = self._unflatten(out)
        if self.allow_nonbinary:
            # Soft targets fail Bernoulli's support check, so the opt-in turns validation off here only.
            base = dist.Bernoulli(logits=logits, validate_args=False)
            return IndependentBernoulli(base, len(self.x_shape), validate_args=False)
        return IndependentBernoulli(dist.Bernoulli(logits=logits), len(self.x_shape))


class NormalLikelihood(Likelihood):
    """x ~ Normal(out, scale) with a fixed scale.

    :param float scale: the fixed observation noise. Defaults to 0.1.
    """

    name = "normal"

    def __init__(self, x_shape: tuple[int, ...], scale: float = 0.1) -> None:
        super().__init__(x_shape)
        check_value("normal likelihood scale", scale, POSITIVE)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def check_data(self, x: torch.Tensor, *, what: str = "data", binarized: bool = False) -> None:
        pass  # any real value is in the support

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc = self._unflatten(out)
        return dist.Normal(loc, self.scale.to(loc.dtype).expand(loc.shape)).to_event(len(self.x_shape))


class LearnedNormalLikelihood(NormalLikelihood):
    """x ~ Normal(out, scale) with one learned scale per observed element.

    :param float scale: the initial scale. Defaults to 0.1.
    """

    name = "normal_learned"

    def __init__(self, x_shape: tuple[int, ...], scale: float = 0.1) -> None:
        super().__init__(x_shape, scale)
        del self.scale
        self.raw_scale = nn.Parameter(torch.full(self.x_shape, inverse_softplus(float(scale))))

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc = self._unflatten(out)
        scale = F.softplus(self.raw_scale) + MIN_SCALE
        return dist.Normal(loc, scale.expand(loc.shape)).to_event(len(self.x_shape))


class ContinuousBernoulliLikelihood(Likelihood):
    """x ~ ContinuousBernoulli(logits=out), a proper density on [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    name = "continuous_bernoulli"

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        logits = self._unflatten(out)
        return dist.ContinuousBernoulli(logits=logits).to_event(len(self.x_shape))


class Categorical256Likelihood(Likelihood):
    """x ~ Categorical(logits=out) over the 256 grey levels of 8-bit images.

    Data stored as floats in [0, 1] is mapped to levels ``round(255 x)``.
    """

    name = "categorical256"
    params_per_element = 256
    pixel_scale = 255.0

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255).long()

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        logits = self._unflatten(out)
        return dist.Categorical(logits=logits).to_event(len(self.x_shape))


def _check_binary(x: torch.Tensor, what: str, name: str) -> None:
    if x.numel() and not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(
            f"{name} likelihood needs binary {what} (0 or 1), but it holds grey levels; "
            "binarize it (data.binarize: dynamic or static), or choose an output for grey levels"
        )


class PixelCNNLikelihood(Likelihood):
    """x ~ PixelCNN(x | c = out): an autoregressive likelihood, prod_i p(x_i | x_<i, c), with a gated PixelCNN.

    The decoder's output is the conditioning ``c``, not the pixels' parameters: a vector of
    ``cond_dim`` numbers (``condition: vector``, added to every gate) or a map of ``cond_channels`` numbers
    per pixel (``condition: spatial``, for a decoder that draws an image). Pixels are binary
    (``output: bernoulli``) or grey levels 0..255 (``output: categorical256``; data in [0, 1] is
    observed as ``round(255 x)``). The network's parameters belong to this module, so the model trains them.
    See :mod:`ppl_vae.autoregressive` for what ``log_prob``, ``sample`` and ``mean`` do.

    :param PixelCNNConfig config: the network. Defaults to ``PixelCNNConfig()``.

    References

    - van den Oord, A. et al. (2016). Conditional Image Generation with PixelCNN Decoders. NeurIPS.
    - Gulrajani, I. et al. (2017). PixelVAE: A Latent Variable Model for Natural Images. ICLR.
    """

    name = "pixelcnn"

    def __init__(self, x_shape: tuple[int, ...], config: PixelCNNConfig | None = None) -> None:
        super().__init__(x_shape)
        self.config = config or PixelCNNConfig()
        self.image_shape = image_shape_of(self.x_shape)
        self.net = GatedPixelCNN(1, self.config)
        self.requires_binary = self.config.output == "bernoulli"  # type: ignore[misc]
        self.pixel_scale = 255.0 if self.config.output == "categorical256" else 1.0
        self.spatial = self.config.condition == "spatial"
        # a decoder that draws a map gives cond_channels numbers per pixel
        self.params_per_element = self.config.cond_channels if self.spatial else 1  # type: ignore[misc]

    @property
    def num_outputs(self) -> int:
        return self.params_per_element * self.num_elements if self.spatial else self.config.cond_dim

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255).long() if self.config.output == "categorical256" else x

    def check_data(self, x: torch.Tensor, *, what: str = "data", binarized: bool = False) -> None:
        super().check_data(x, what=what)
        if self.requires_binary and not binarized:
            _check_binary(x, what, "pixelcnn (output: bernoulli)")

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        if out.shape[-1] != self.num_outputs:
            hint = "" if self.spatial else "; a decoder that draws an image (a conv net) needs pixelcnn.condition: spatial"
            raise ValueError(
                f"{self.name} likelihood expected decoder outputs of size {self.num_outputs}, got shape {tuple(out.shape)}{hint}"
            )
        cond = out
        if self.spatial:
            _, height, width = self.image_shape
            # (..., H * W * P), pixel-major -> (..., P, H, W)
            cond = out.reshape(*out.shape[:-1], height, width, self.params_per_element).movedim(-1, -3)
        return PixelCNNDistribution(self.net, cond, self.x_shape)


#: Registry of likelihoods, chosen by name (``model.likelihood`` in configs).
LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        BernoulliLikelihood,
        NormalLikelihood,
        LearnedNormalLikelihood,
        ContinuousBernoulliLikelihood,
        Categorical256Likelihood,
        PixelCNNLikelihood,
    )
}


def make_likelihood(
    name: str,
    x_shape: tuple[int, ...],
    *,
    scale: float = 0.1,
    allow_nonbinary: bool = False,
    option_key: str = "allow_nonbinary",
    pixelcnn: PixelCNNConfig | None = None,
) -> Likelihood:
    """Build a likelihood from the registry.

    :param str name: a key of :data:`LIKELIHOODS`.
    :param tuple x_shape: shape of one observation.
    :param float scale: fixed (``normal``) or initial (``normal_learned``) scale.
    :param bool allow_nonbinary: let ``bernoulli`` accept grey levels.
    :param str option_key: the config key of ``allow_nonbinary`` for the model at hand, for error messages.
    :param PixelCNNConfig pixelcnn: the network of a ``pixelcnn`` likelihood. Defaults to ``PixelCNNConfig()``.
    """
    check_choice("likelihood", name, LIKELIHOODS)
    cls = LIKELIHOODS[name]
    if issubclass(cls, NormalLikelihood):
        return cls(x_shape, scale=scale)
    if cls is BernoulliLikelihood:
        return cls(x_shape, allow_nonbinary=allow_nonbinary, option_key=option_key)
    if cls is PixelCNNLikelihood:
        return cls(x_shape, pixelcnn)
    return cls(x_shape)
