"""Amortized diagonal-Normal guide q(z|x)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch.nn import functional as F

from ..models.vae import check_sizes
from ..nets import ACTIVATIONS, MLP, check_choice

__all__ = ["NormalGuide", "NormalGuideConfig"]


@dataclass(frozen=True)
class NormalGuideConfig:
    """Configuration of :class:`NormalGuide` (the ``guide:`` section, with ``name: normal``)."""

    hidden_dims: tuple[int, ...] = (400,)  # encoder hidden layer sizes, x -> ... -> (loc, scale)
    activation: str = "relu"  # encoder activation, a key of ppl_vae.nets.ACTIVATIONS
    min_scale: float = 1e-4  # floor added to softplus(.) so the scale never reaches 0

    def __post_init__(self) -> None:
        check_sizes("guide", "hidden_dims", self.hidden_dims)
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        check_choice("activation", self.activation, ACTIVATIONS)
        if not self.min_scale >= 0:
            raise ValueError(f"guide.min_scale must be >= 0, got {self.min_scale!r}")


class NormalGuide(PyroModule):
    r"""Amortized mean-field Normal guide.

    For each data point in the plate ``data``::

        (loc, scale) = encoder(x)
        z ~ q(z | x) = Normal(loc, scale)          # site "z", shape (latent_dim,)

    with ``scale = softplus(.) + min_scale``.

    :param tuple x_shape: shape of one observation.
    :param int latent_dim: size of z; must match the model's.
    :param NormalGuideConfig config: encoder sizes and activation.

    References

    - Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(self, x_shape: tuple[int, ...], latent_dim: int, config: NormalGuideConfig | None = None) -> None:
        super().__init__()
        config = config or NormalGuideConfig()
        self.config = config
        self.x_shape = tuple(int(s) for s in x_shape)
        self.latent_dim = latent_dim
        self.encoder = MLP(math.prod(self.x_shape), config.hidden_dims, 2 * latent_dim, config.activation)

    def z_dist(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) for ``x`` of shape ``(batch, *x_shape)``."""
        # (batch, *x_shape) -> (batch, prod(x_shape))
        out = self.encoder(x.reshape(x.shape[0], -1))
        loc, raw_scale = out.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + self.config.min_scale).to_event(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int | None = None):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.z_dist(x))
