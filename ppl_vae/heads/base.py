"""Guide heads: the last stage of an amortized guide, q(latent | context).

A guide network maps what a latent conditions on (x, given inputs, other latents) to a context
vector; a *head* maps that context to the distribution of one latent. Heads are chosen by name from
:data:`ppl_vae.heads.HEADS`, with arguments after a colon (``"iaf:4"`` = four IAF steps).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ..families import MIN_SCALE, Family

__all__ = ["Head", "ParamHead", "DeltaHead"]


class Head(nn.Module):
    """Maps a context ``(..., context_dim)`` to a distribution over one latent of size ``dim``."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.dim = dim

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class ParamHead(Head):
    """A linear map from the context to the unconstrained parameters of a :class:`~ppl_vae.families.Family`.

    :param float temperature: relaxed families: the Gumbel-softmax temperature.
    :param float min_scale: loc-scale families: the floor added to the scale.
    """

    def __init__(
        self, context_dim: int, dim: int, family: Family, temperature: float = 0.5, min_scale: float = MIN_SCALE
    ) -> None:
        super().__init__(context_dim, dim)
        self.family = family
        self.temperature = temperature
        self.min_scale = min_scale
        self.linear = nn.Linear(context_dim, family.num_params(dim))

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        return self.family.dist(self.linear(context), self.dim, self.temperature, self.min_scale)


class DeltaHead(Head):
    """A point mass at a linear map of the context: a deterministic encoder, ``q(z|x) = δ(z - f(x))``.

    With it the bound is ``log p(x|f(x)) + log p(f(x))``: a MAP estimate of the code, the prior acting as a
    penalty on it (a Normal prior is an L2 penalty). This is the classic autoencoder; the importance-sampled
    log p(x) means nothing for it, so tools that need a proper q(z|x) refuse a guide with a ``delta`` head.
    """

    deterministic = True

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__(context_dim, dim)
        self.linear = nn.Linear(context_dim, dim)

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(self.linear(context), event_dim=1)
