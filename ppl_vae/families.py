"""Distribution families for latent variables, chosen by name, in one place.

A family turns a vector of unconstrained parameters, as produced by a network
or held as a learned prior, into a Pyro distribution over one variable of
size ``dim``:

====================== =============== ============ ===================================
family                 value           event shape  parameters
====================== =============== ============ ===================================
normal                 real vector     (dim,)       loc, softplus -> scale
laplace                real vector     (dim,)       loc, softplus -> scale
bernoulli              {0,1} vector    (dim,)       logits
categorical            index in [0,dim) ()          dim logits
onehot_categorical     one-hot vector  (dim,)       dim logits
relaxed_categorical    simplex vector  (dim,)       dim logits (Gumbel-softmax, fixed temperature)
====================== =============== ============ ===================================

When a variable feeds a network it is encoded as floats of size
:meth:`Family.input_size` (one-hot for ``categorical``).

Shaped priors
-------------

:data:`PRIOR_SHAPES` holds fixed priors of a particular shape over a 2-D real latent, the targets of an
adversarial autoencoder's figures (Makhzani et al. 2016, fig. 2 and 4). They are *not* families: no guide
head or learned parameters come with them, so they stay out of :data:`FAMILIES` (and out of the heads
and coverage tests that pair every family with every head). A spec latent of family ``normal`` uses one
with ``prior: <name>`` (see :class:`~ppl_vae.spec.LatentSpec`). Each is a Gaussian mixture, so it has an
exact ``log_prob`` as well as ``sample``:

================ ============================================================================
prior            p(z), z in R^2
================ ============================================================================
mixture_circle   10 equally weighted Normals (scale 0.5) centred on a circle of radius 4
swiss_roll       100 equally weighted Normals (scale 0.2) along a spiral r = 4 t, angle 3 pi t,
                 centres at t = sqrt(u), u evenly spaced in [0.05, 1] (even spacing along the arc)
================ ============================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pyro.distributions as dist
import torch
from torch.nn import functional as F

from .nets import check_choice
from .schema import documented

__all__ = ["FAMILIES", "MIN_SCALE", "PRIOR_SHAPES", "Family", "PriorShape", "get_family", "inverse_softplus", "shaped_prior"]

#: The floor added to every softplus-parameterised scale (guides, learned priors, likelihoods), so a
#: scale never reaches 0.
MIN_SCALE = 1e-4


def inverse_softplus(value: float | torch.Tensor) -> float | torch.Tensor:
    """The x with softplus(x) = value, for a number or a tensor of positive values."""
    if torch.is_tensor(value):
        return value + torch.log(-torch.expm1(-value))
    return value + math.log(-math.expm1(-value))


_UNIT_SCALE_RAW = inverse_softplus(1.0 - MIN_SCALE)  # softplus(raw) + min_scale = 1


def _split_loc_scale(params: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    loc, raw = params.chunk(2, dim=-1)
    return loc, F.softplus(raw) + min_scale


@documented
@dataclass(frozen=True)
class Family:
    """A parametric family of distributions over one variable of size ``dim``."""

    #: registry key
    name: str
    #: values are discrete (needs enumeration, REINFORCE or a relaxation)
    discrete: bool
    #: has rsample, so pathwise gradients apply
    reparameterized: bool
    #: values are unconstrained real vectors (guides may use any real family or a flow)
    real_support: bool
    #: unconstrained parameters per unit of dim
    params_per_dim: int
    #: (params, dim, temperature, min_scale) -> distribution
    build: Callable[[torch.Tensor, int, float, float], dist.TorchDistribution]
    #: unconstrained parameters of the standard prior
    default_params: Callable[[int], torch.Tensor]

    def num_params(self, dim: int) -> int:
        """How many unconstrained numbers parameterise a variable of size ``dim``."""
        return self.params_per_dim * dim

    def input_size(self, dim: int) -> int:
        """Size of the float encoding of a value when it feeds a network."""
        return dim

    def encode(self, value: torch.Tensor, dim: int) -> torch.Tensor:
        """Float encoding ``(..., input_size)`` of a value, for use as a network input."""
        if self.name == "categorical":
            return F.one_hot(value.long(), dim).to(torch.get_default_dtype())
        return value

    def dist(
        self, params: torch.Tensor, dim: int, temperature: float = 0.5, min_scale: float = MIN_SCALE
    ) -> dist.TorchDistribution:
        """The distribution with unconstrained ``params`` of shape ``(..., num_params(dim))``.

        :param float temperature: relaxed families: the Gumbel-softmax temperature.
        :param float min_scale: loc-scale families: the floor added to the scale.
        """
        if params.shape[-1] != self.num_params(dim):
            raise ValueError(
                f"{self.name} family of dim {dim} needs {self.num_params(dim)} parameters, got shape {tuple(params.shape)}"
            )
        return self.build(params, dim, temperature, min_scale)

    def event_shape(self, dim: int) -> tuple[int, ...]:
        """Event shape of a value."""
        return () if self.name == "categorical" else (dim,)


def _normal(params, dim, temperature, min_scale):
    loc, scale = _split_loc_scale(params, min_scale)
    return dist.Normal(loc, scale).to_event(1)


def _laplace(params, dim, temperature, min_scale):
    loc, scale = _split_loc_scale(params, min_scale)
    return dist.Laplace(loc, scale).to_event(1)


def _loc_scale_default(dim: int) -> torch.Tensor:
    return torch.cat([torch.zeros(dim), torch.full((dim,), _UNIT_SCALE_RAW)])


#: Registry of latent-variable families.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("normal", False, True, True, 2, _normal, _loc_scale_default),
        Family("laplace", False, True, True, 2, _laplace, _loc_scale_default),
        Family("bernoulli", True, False, False, 1, lambda p, d, t, s: dist.Bernoulli(logits=p).to_event(1), torch.zeros),
        Family("categorical", True, False, False, 1, lambda p, d, t, s: dist.Categorical(logits=p), torch.zeros),
        Family("onehot_categorical", True, False, False, 1, lambda p, d, t, s: dist.OneHotCategorical(logits=p), torch.zeros),
        Family(
            "relaxed_categorical",
            False,
            True,
            False,
            1,
            lambda p, d, t, s: dist.RelaxedOneHotCategorical(torch.tensor(t, dtype=p.dtype, device=p.device), logits=p),
            torch.zeros,
        ),
    )
}


def get_family(name: str) -> Family:
    """The family ``name``; ``ValueError`` naming the choices otherwise."""
    check_choice("family", name, FAMILIES)
    return FAMILIES[name]


# -- shaped priors (not families; see the module docstring) -----------------------------------------


@documented
@dataclass(frozen=True)
class PriorShape:
    """A fixed prior over a 2-D real latent: an equally weighted mixture of isotropic Normals."""

    #: registry key (``prior:`` of a spec latent)
    name: str
    #: the mixture's centres, (num_components, 2)
    centres: Callable[[], torch.Tensor]
    #: each component's standard deviation
    scale: float
    #: the latent size it is defined for
    dim: int = 2

    def dist(self, like: torch.Tensor) -> dist.TorchDistribution:
        """p(z) with event shape ``(2,)``, on the device and with the dtype of ``like``."""
        centres = self.centres().to(device=like.device, dtype=like.dtype)
        mixing = dist.Categorical(logits=like.new_zeros(centres.shape[0]))
        components = dist.Normal(centres, like.new_full(centres.shape, self.scale)).to_event(1)
        return dist.MixtureSameFamily(mixing, components)


def _circle_centres(num: int = 10, radius: float = 4.0) -> torch.Tensor:
    angle = torch.arange(num, dtype=torch.float64) * (2 * math.pi / num)
    return (radius * torch.stack([angle.cos(), angle.sin()], -1)).float()


def _swiss_roll_centres(num: int = 100, radius: float = 4.0, turns: float = 1.5) -> torch.Tensor:
    t = torch.linspace(0.05, 1.0, num, dtype=torch.float64).sqrt()  # even spacing along the arc
    angle = 2 * math.pi * turns * t
    return (radius * t[:, None] * torch.stack([angle.cos(), angle.sin()], -1)).float()


#: Registry of shaped priors (see the module docstring).
PRIOR_SHAPES: dict[str, PriorShape] = {
    p.name: p for p in (PriorShape("mixture_circle", _circle_centres, 0.5), PriorShape("swiss_roll", _swiss_roll_centres, 0.2))
}


def shaped_prior(name: str, like: torch.Tensor) -> dist.TorchDistribution:
    """The shaped prior ``name`` on the device and with the dtype of ``like``; ``ValueError`` naming the choices otherwise."""
    check_choice("prior", name, PRIOR_SHAPES)
    return PRIOR_SHAPES[name].dist(like)
