"""Guide heads: the last stage of an amortized guide, q(latent | context).

A guide network maps what a latent conditions on (x, given inputs, other
latents) to a context vector; a *head* maps that context to the distribution
of one latent. Heads are chosen by name from :data:`HEADS`, optionally with
an integer argument written after a colon (``"iaf:4"`` = four IAF steps).

Each head declares which model families it can stand in for: a guide over a
real-valued latent may be any real head (normal, laplace, full covariance,
flows); a discrete latent needs the same discrete family.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import pyro.distributions as dist
import torch
from torch import nn

from ..families import FAMILIES, Family

__all__ = ["HEADS", "HeadEntry", "Head", "ParamHead", "make_head", "parse_head_name"]


class Head(nn.Module):
    """Maps a context ``(..., context_dim)`` to a distribution over one latent of size ``dim``."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.dim = dim

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class ParamHead(Head):
    """A linear map from the context to the unconstrained parameters of a :class:`~ppl_vae.families.Family`."""

    def __init__(self, context_dim: int, dim: int, family: Family, temperature: float = 0.5) -> None:
        super().__init__(context_dim, dim)
        self.family = family
        self.temperature = temperature
        self.linear = nn.Linear(context_dim, family.num_params(dim))

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        return self.family.dist(self.linear(context), self.dim, self.temperature)


class HeadEntry(NamedTuple):
    """A registry entry: how to build the head, and which model families it may stand in for."""

    build: Callable[..., Head]  # build(context_dim, dim, arg, temperature) -> Head
    accepts: Callable[[Family], bool]  # may this head be the guide of a latent of this family?
    takes_arg: bool = False  # whether "name:N" is meaningful


def _family_head(name: str) -> HeadEntry:
    family = FAMILIES[name]

    def build(context_dim: int, dim: int, arg: Optional[int] = None, temperature: float = 0.5) -> Head:
        return ParamHead(context_dim, dim, family, temperature)

    if family.real_support:
        return HeadEntry(build, lambda f: f.real_support)
    return HeadEntry(build, lambda f, name=name: f.name == name)


#: Registry of guide heads (the ``family`` of a guide factor).
HEADS: dict[str, HeadEntry] = {name: _family_head(name) for name in FAMILIES}


def parse_head_name(text: str) -> tuple[str, Optional[int]]:
    """Split ``"iaf:4"`` into ``("iaf", 4)``; ``ValueError`` for an unknown head or a bad argument."""
    name, _, arg = str(text).partition(":")
    if name not in HEADS:
        raise ValueError(f"unknown guide family {name!r}; expected one of {sorted(HEADS)}")
    if not arg:
        return name, None
    if not HEADS[name].takes_arg:
        raise ValueError(f"guide family {name!r} takes no ':N' argument, got {text!r}")
    try:
        value = int(arg)
    except ValueError:
        raise ValueError(f"guide family {text!r}: the part after ':' must be a positive int") from None
    if value < 1:
        raise ValueError(f"guide family {text!r}: the part after ':' must be a positive int")
    return name, value


def make_head(text: str, context_dim: int, dim: int, temperature: float = 0.5) -> Head:
    """Build the head named ``text`` (e.g. ``"normal"``, ``"iaf:4"``)."""
    name, arg = parse_head_name(text)
    return HEADS[name].build(context_dim, dim, arg, temperature)


# Heads defined in their own modules register themselves in HEADS when imported ("fullcov", and the
# flows "iaf", "planar", "radial", "spline"); importing them here completes the registry whichever
# module is imported first.
from . import flows, fullcov  # noqa: E402,F401
