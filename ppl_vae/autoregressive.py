"""An autoregressive distribution over images: p(x | c) = prod_i p(x_i | x_<i, c), with a gated PixelCNN.

:class:`PixelCNNDistribution` is a Pyro ``TorchDistribution`` whose event shape is the data's shape:

- ``log_prob`` is exact and takes one pass of the network (teacher forcing: the causal masks make the
  logits at pixel i a function of the pixels before i only);
- ``sample`` draws pixel by pixel in raster order, vectorised over the batch shape (particles, enumerated
  parents, the data plate) and any ``sample_shape``. Each step runs the network on the window of rows
  ``i - r .. i`` and columns ``j - r .. j + r`` around the pixel (``r`` the network's reach,
  :attr:`~ppl_vae.pixelcnn.PixelCNNConfig.receptive_reach`): the logits there are those of a full pass,
  at a fraction of the cost;
- ``mean`` has no closed form (it is a sum over every image). This distribution returns the
  **per-pixel conditional means along one ancestral sample**, ``E[x_i | x_<i, c]`` with ``x ~ p(x | c)``: the
  sample this object drew last (with an empty ``sample_shape``), or a fresh one. It is random, as a
  sample is, and shows the model's uncertainty as grey levels; it is what figures (``ppl-vae sample``,
  reconstructions) draw.

References

- van den Oord, A., Kalchbrenner, N., Vinyals, O., Espeholt, L., Graves, A. & Kavukcuoglu, K. (2016).
  Conditional Image Generation with PixelCNN Decoders. NeurIPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.nn import functional as F

from .pixelcnn import GatedPixelCNN

__all__ = ["AncestralSample", "PixelCNNDistribution", "image_shape_of"]


def image_shape_of(x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The one-channel image a PixelCNN sees for data of shape ``x_shape``: ``(D,) -> (1, 1, D)``,
    ``(H, W) -> (1, H, W)``, ``(1, H, W)`` as it is. Raster order is the data's own element order."""
    if len(x_shape) == 1:
        return (1, 1, x_shape[0])
    if len(x_shape) == 2:
        return (1, *x_shape)
    if len(x_shape) == 3 and x_shape[0] == 1:
        return tuple(x_shape)  # type: ignore[return-value]
    raise ValueError(f"the pixelcnn likelihood models vectors or one-channel images (1, H, W), got items of shape {tuple(x_shape)}")


@dataclass
class AncestralSample:
    """What :meth:`PixelCNNDistribution.ancestral_sample` returns (shapes for ``sample_shape + batch_shape = S``)."""

    #: the sample, ``S + event_shape``
    value: torch.Tensor
    #: log p(x_i | x_<i, c) of each pixel as it was drawn, ``S + (num_pixels,)`` in raster order
    step_log_probs: torch.Tensor
    #: E[x_i | x_<i, c] of each pixel as it was drawn, ``S + event_shape``
    means: torch.Tensor


class PixelCNNDistribution(dist.TorchDistribution):
    """p(x | c) of a gated PixelCNN, with event shape ``x_shape``.

    :param GatedPixelCNN net: the network (its config says the output kind and the conditioning).
    :param torch.Tensor cond: ``batch_shape + (cond_dim,)`` (vector conditioning) or
        ``batch_shape + (cond_channels, H, W)`` (a map).
    :param tuple x_shape: the event shape (the data's shape).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, net: GatedPixelCNN, cond: torch.Tensor, x_shape: tuple[int, ...], validate_args=None) -> None:
        self.net = net
        self.cond = cond
        self.image_shape = image_shape_of(x_shape)
        self.spatial = net.config.condition == "spatial"
        self.cond_dims = 3 if self.spatial else 1
        self.categorical = net.config.output == "categorical256"
        self._last_means: torch.Tensor | None = None
        super().__init__(cond.shape[: cond.dim() - self.cond_dims], torch.Size(x_shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        base = constraints.integer_interval(0, 255) if self.categorical else constraints.boolean
        return constraints.independent(base, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        cond = self.cond.expand(batch_shape + self.cond.shape[self.cond.dim() - self.cond_dims :])
        return PixelCNNDistribution(self.net, cond, tuple(self.event_shape), validate_args=self._validate_args)

    # -- the network -------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as network inputs in [-1, 1]."""
        x = x.to(self.cond.dtype)
        return x / 127.5 - 1 if self.categorical else 2 * x - 1

    def _logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (N, 1, H, W); cond: (N, cond_dim) or (N, cond_channels, H, W) -> (N, L, H, W)
        return self.net(self._encode(x), None if self.spatial else cond, cond if self.spatial else None)

    def _pixel_log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # logits (N, L, ...), x (N, 1, ...) -> (N, 1, ...)
        if self.categorical:
            return F.log_softmax(logits, dim=1).gather(1, x.long())
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")

    def _flat_cond(self, shape: torch.Size) -> torch.Tensor:
        event = self.cond.shape[self.cond.dim() - self.cond_dims :]
        return self.cond.expand(shape + event).reshape(-1, *event)

    # -- scoring --------------------------------------------------------------------------------------
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x | c), exactly, in one pass of the network."""
        if self._validate_args:
            self._validate_sample(value)
        event_dims = len(self.event_shape)
        shape = torch.broadcast_shapes(value.shape[: value.dim() - event_dims], self.batch_shape)
        x = value.expand(shape + self.event_shape).reshape(-1, *self.image_shape)  # (N, 1, H, W)
        per_pixel = self._pixel_log_prob(self._logits(x, self._flat_cond(shape)), x)
        return per_pixel.reshape(x.shape[0], -1).sum(-1).reshape(shape)

    # -- sampling -------------------------------------------------------------------------------------
    def _draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pixel from its logits ``(N, L)``: the value ``(N,)``, its log-probability and the pixel's mean."""
        if self.categorical:
            step = dist.Categorical(logits=logits)
            levels = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
            mean = (step.probs * levels).sum(-1)
        else:
            step = dist.Bernoulli(logits=logits[:, 0])
            mean = step.probs
        value = step.sample()
        return value, step.log_prob(value), mean

    def ancestral_sample(self, sample_shape: torch.Size = torch.Size()) -> AncestralSample:
        """Draw pixel by pixel, keeping each step's log-probability and conditional mean."""
        shape = torch.Size(sample_shape) + self.batch_shape
        cond = self._flat_cond(shape)
        _, height, width = self.image_shape
        n = cond.shape[0]
        x = torch.zeros(n, *self.image_shape, device=self.cond.device, dtype=torch.long if self.categorical else self.cond.dtype)
        means = torch.zeros(n, height, width, device=self.cond.device, dtype=self.cond.dtype)
        steps = torch.zeros(n, height, width, device=self.cond.device, dtype=self.cond.dtype)
        reach = self.net.config.receptive_reach
        with torch.no_grad():
            for i in range(height):
                top = max(0, i - reach)
                for j in range(width):
                    left, right = max(0, j - reach), min(width, j + reach + 1)
                    window = cond[..., top : i + 1, left:right] if self.spatial else cond
                    logits = self._logits(x[..., top : i + 1, left:right], window)[:, :, i - top, j - left]
                    value, steps[:, i, j], means[:, i, j] = self._draw(logits)
                    x[:, 0, i, j] = value.to(x.dtype)
        event = shape + self.event_shape
        return AncestralSample(x.reshape(event), steps.reshape(*shape, -1), means.reshape(event))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        drawn = self.ancestral_sample(sample_shape)
        if not sample_shape:
            self._last_means = drawn.means
        return drawn.value

    @property
    def mean(self) -> torch.Tensor:
        """E[x_i | x_<i, c] along the last sample drawn (a fresh one if none was): see the module docstring."""
        if self._last_means is None:
            self._last_means = self.ancestral_sample().means
        return self._last_means
