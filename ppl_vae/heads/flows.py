r"""Normalizing-flow guide heads: a context-dependent diagonal Normal pushed through conditional flows.

For a context ``c`` (what the latent conditions on, as computed by the guide
network), a flow head with K steps defines

.. math::

    u_0 \sim \mathcal{N}\big(\mu(c), \operatorname{diag}\sigma(c)^2\big), \qquad
    z = f_K(\cdot\,; c) \circ \dots \circ f_1(u_0; c),

    \log q(z \mid c) = \log \mathcal{N}(u_0; \mu(c), \sigma(c)^2)
        - \sum_{k=1}^{K} \log \left| \det \frac{\partial f_k(u_{k-1}; c)}{\partial u_{k-1}} \right|,

where each step ``f_k`` is a conditional transform from
:mod:`pyro.distributions.transforms` whose hypernetwork reads the context.
The log-density is exact (no bound): every step is a bijection with a
tractable Jacobian determinant.

==========  ==============================================  ================  ==============================
head        step f_k                                        default K         log q of any point z
==========  ==============================================  ================  ==============================
``iaf``     conditional affine autoregressive (IAF)         2                 yes (sequential inverse)
``planar``  conditional planar, z + u tanh(w^T z + b)       4                 yes (1-D root find per step)
``radial``  conditional radial, z + beta h(r)(z - z0)       4                 yes (closed-form inverse)
``spline``  conditional rational-linear spline,             2                 yes (sequential inverse)
            autoregressive
==========  ==============================================  ================  ==============================

The number of steps is the head's argument: ``"iaf:4"``. Autoregressive steps
(``iaf``, ``spline``) alternate between the natural and the reversed variable
order, which is the same as permuting the dimensions between steps (without a
final permutation), so that every coordinate can depend on every other one.

``spline`` uses :class:`~pyro.distributions.transforms.ConditionalSplineAutoregressive`
rather than the element-wise ``conditional_spline``: an element-wise spline of a
diagonal base is still a product of independent marginals, so stacking it can
never model correlations. Both are exact bijections; the spline is the identity
outside ``[-bound, bound]`` in each coordinate (linear tails).

Planar and radial steps have no closed-form inverse in Pyro, which can only
score the samples it drew itself. Here they are given one (a bracketed
bisection for planar, the root of a quadratic for radial), so ``log_prob``
works on any point, as needed to plot or integrate the density.

Broadcasting: the context ``(N, context_dim)`` has batch shape ``(N,)``; under
an outer particle plate the samples are ``(K, N, dim)`` and every hypernetwork
output broadcasts against them from the right.

References

- Rezende, D. J. & Mohamed, S. (2015). Variational Inference with Normalizing Flows. ICML.
- Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. & Welling, M. (2016).
  Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS.
- Durkan, C., Bekasov, A., Murray, I. & Papamakarios, G. (2019). Neural Spline Flows. NeurIPS.
- Dolatabadi, H. M., Erfani, S. & Leckie, C. (2020). Invertible Generative Modeling using Linear
  Rational Splines. AISTATS.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms import (
    ConditionalAffineAutoregressive,
    ConditionalPlanar,
    ConditionalRadial,
    ConditionalSplineAutoregressive,
)
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.distributions.transforms.radial import ConditionedRadial
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import nn
from torch.nn import functional as F

from ..compat import conditional_params, conditioned_params
from ..families import MIN_SCALE
from ..schema import POSITIVE_INT, check_value
from .base import Head

__all__ = ["FlowHead", "FLOW_STEPS", "make_flow_steps"]

_BISECTION_STEPS = 60


class FlowHead(Head):
    """A diagonal Normal base from the context, followed by conditional transforms of the same context.

    :param int context_dim: size of the context vector.
    :param int dim: size of the latent; event shape ``(dim,)``.
    :param steps: conditional transforms (``condition(context) -> Transform``), applied in order.
        They are registered as submodules, so they train and are saved with the head.
    :param float min_scale: floor on the base scale. Defaults to 1e-4.
    """

    def __init__(
        self, context_dim: int, dim: int, steps: Sequence[ConditionalTransformModule], min_scale: float = MIN_SCALE
    ) -> None:
        super().__init__(context_dim, dim)
        self.min_scale = min_scale
        self.base = nn.Linear(context_dim, 2 * dim)
        self.steps = nn.ModuleList(steps)

    def base_dist(self, context: torch.Tensor) -> dist.TorchDistribution:
        """The base distribution of ``u_0``, batch shape ``context.shape[:-1]``, event shape ``(dim,)``."""
        loc, raw_scale = self.base(context).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + self.min_scale).to_event(1)

    def transforms(self, context: torch.Tensor) -> list:
        """The K steps conditioned on ``context`` (plain transforms, each caching its last (x, y) pair)."""
        return [step.condition(context) for step in self.steps]

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        return dist.TransformedDistribution(self.base_dist(context), self.transforms(context))


# ---------------------------------------------------------------------------------------------
# Planar and radial steps with an inverse, so that any point can be scored.


class _InvertiblePlanar(ConditionedPlanar):
    """Planar step ``y = x + u_hat tanh(w^T x + b)`` with a numerical inverse.

    With ``a = w^T x + b`` and ``c = w^T u_hat > -1`` (Pyro's constraint), ``w^T y + b = a + c tanh(a)``
    is strictly increasing in ``a`` and differs from ``a`` by at most ``|c|``, so bisection on the
    bracket ``[t - |c|, t + |c|]`` finds ``a``; then ``x = y - u_hat tanh(a)``.
    """

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        bias, u, w = conditioned_params(self)
        u_hat = self.u_hat(u, w)
        c = (w * u_hat).sum(-1, keepdim=True)  # (..., 1)
        t = (w * y).sum(-1, keepdim=True) + bias  # (..., 1), broadcast over samples
        c = c.expand_as(t)
        lo, hi = t - c.abs(), t + c.abs()
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            above = mid + c * torch.tanh(mid) > t
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        a = 0.5 * (lo + hi)
        x = y - u_hat * torch.tanh(a)
        self._call(x)  # refresh the cached log|det J| for this x
        return x


class _InvertibleConditionalPlanar(ConditionalPlanar):
    def condition(self, context: torch.Tensor) -> _InvertiblePlanar:
        return _InvertiblePlanar(conditional_params(self, context))


class _InvertibleRadial(ConditionedRadial):
    """Radial step ``y = x + beta / (alpha + r) (x - x0)``, ``r = |x - x0|``, with its closed-form inverse.

    ``|y - x0| = r (1 + beta / (alpha + r))``, a quadratic in ``r`` with one non-negative root
    (``beta > -alpha`` makes the map increasing in ``r``); then ``x = x0 + (y - x0) / (1 + beta / (alpha + r))``.
    """

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x0, alpha_prime, beta_prime = conditioned_params(self)
        alpha = F.softplus(alpha_prime)
        beta = -alpha + F.softplus(beta_prime)
        diff = y - x0
        r_y = diff.norm(dim=-1, keepdim=True)
        # r^2 + (alpha + beta - r_y) r - alpha r_y = 0
        p = alpha + beta - r_y
        r = 0.5 * (-p + torch.sqrt(p * p + 4 * alpha * r_y))
        x = x0 + diff / (1 + beta / (alpha + r))
        self._call(x)  # refresh the cached log|det J| for this x
        return x


class _InvertibleConditionalRadial(ConditionalRadial):
    def condition(self, context: torch.Tensor) -> _InvertibleRadial:
        return _InvertibleRadial(conditional_params(self, context))


# ---------------------------------------------------------------------------------------------
# Step builders: (context_dim, dim, num_steps) -> list of conditional transform modules.


def _orders(dim: int, num_steps: int) -> list[torch.Tensor]:
    """Alternate natural and reversed variable orders, so successive autoregressive steps see different orders."""
    natural = torch.arange(dim)
    return [natural if k % 2 == 0 else natural.flip(0) for k in range(num_steps)]


def _autoregressive_nn(context_dim: int, dim: int, hidden_dims: list[int], param_dims: list[int], order):
    with warnings.catch_warnings():
        # For dim = 1 Pyro suggests an affine map instead; a 1-D conditional autoregressive step *is*
        # an affine (or spline) map whose parameters depend on the context only, which is what we want.
        warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1", category=UserWarning)
        return ConditionalAutoRegressiveNN(dim, context_dim, hidden_dims, param_dims=param_dims, permutation=order)


def _iaf_steps(context_dim: int, dim: int, num_steps: int) -> list[ConditionalTransformModule]:
    hidden = [10 * dim]
    return [
        ConditionalAffineAutoregressive(_autoregressive_nn(context_dim, dim, hidden, [1, 1], order))
        for order in _orders(dim, num_steps)
    ]


def _planar_steps(context_dim: int, dim: int, num_steps: int) -> list[ConditionalTransformModule]:
    hidden = [10 * dim, 10 * dim]
    # hypernetwork outputs: bias (1), u (dim), w (dim)
    return [_InvertibleConditionalPlanar(DenseNN(context_dim, hidden, [1, dim, dim])) for _ in range(num_steps)]


def _radial_steps(context_dim: int, dim: int, num_steps: int) -> list[ConditionalTransformModule]:
    hidden = [10 * dim, 10 * dim]
    # hypernetwork outputs: centre x0 (dim), alpha' (1), beta' (1)
    return [_InvertibleConditionalRadial(DenseNN(context_dim, hidden, [dim, 1, 1])) for _ in range(num_steps)]


_SPLINE_BINS = 8
_SPLINE_BOUND = 3.0


def _spline_steps(context_dim: int, dim: int, num_steps: int) -> list[ConditionalTransformModule]:
    hidden = [10 * dim, 10 * dim]
    bins = _SPLINE_BINS
    # widths, heights, inner-knot derivatives and (linear order) lambdas, per coordinate
    param_dims = [bins, bins, bins - 1, bins]
    return [
        ConditionalSplineAutoregressive(
            dim,
            _autoregressive_nn(context_dim, dim, hidden, param_dims, order),
            count_bins=bins,
            bound=_SPLINE_BOUND,
            order="linear",
        )
        for order in _orders(dim, num_steps)
    ]


#: Flow heads: name -> (step builder, default number of steps).
FLOW_STEPS: dict[str, tuple[Callable[[int, int, int], list[ConditionalTransformModule]], int]] = {
    "iaf": (_iaf_steps, 2),
    "planar": (_planar_steps, 4),
    "radial": (_radial_steps, 4),
    "spline": (_spline_steps, 2),
}


def make_flow_steps(
    name: str, context_dim: int, dim: int, num_steps: int | None = None
) -> list[ConditionalTransformModule]:
    """The conditional steps of flow ``name`` (a key of :data:`FLOW_STEPS`); ``num_steps`` defaults per flow."""
    if name not in FLOW_STEPS:
        raise ValueError(f"unknown flow {name!r}; expected one of {sorted(FLOW_STEPS)}")
    build, default = FLOW_STEPS[name]
    k = default if num_steps is None else num_steps
    check_value(f"flow {name!r}: the number of steps", k, POSITIVE_INT)
    return build(context_dim, dim, k)

