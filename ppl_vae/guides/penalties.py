r"""Penalties on an encoder: the sparse and the contractive autoencoder.

Both are added to the training loss from inside the guide with :func:`~ppl_vae.contract.add_penalty`, so
``fit`` reports them as ``term_sparsity`` and ``term_contractive`` in ``metrics.jsonl`` (nats per data point).
The guide adds them in training mode only: they regularise the training, they are not part of the bound
that ``evaluate`` reports.

**Sparsity** (``kind: kl``, Ng 2011) makes each unit of the code ``z`` rarely active: with sigmoid activations
:math:`a_{ij} = \sigma(z_{ij})` and the batch's mean activation :math:`\hat\rho_j = \frac1B \sum_i a_{ij}`,

.. math::

    \Omega_{\mathrm{KL}} = \lambda \sum_j \mathrm{KL}(\rho \,\|\, \hat\rho_j)
    = \lambda \sum_j \rho \log\frac{\rho}{\hat\rho_j} + (1 - \rho) \log\frac{1 - \rho}{1 - \hat\rho_j}.

This is a property of the batch, not of one point. Every point of the batch gets the whole of it, so the loss per
data point is the reconstruction term plus :math:`\Omega_{\mathrm{KL}}`, as in Ng's objective
:math:`\frac1B \sum_i \ell(x_i) + \beta \sum_j \mathrm{KL}(\rho \| \hat\rho_j)`, whatever the batch size
(spreading it as KL/B per point would make its weight depend on the batch size). ``term_sparsity`` is
:math:`\Omega_{\mathrm{KL}}` itself. ``kind: l1`` is the mean absolute activation,
:math:`\lambda \sum_j |z_{ij}|` for point i, whose mean over the batch is :math:`\lambda \sum_j \frac1B\sum_i |z_{ij}|`.

**Contraction** (Rifai et al. 2011) penalises the squared Frobenius norm of the encoder's Jacobian,
:math:`\lambda \|\partial f(x) / \partial x\|_F^2` per point, computed exactly, in closed form through the layers
of the MLP encoder ``f(x) = W_{L+1} h_L``, ``h_l = s(W_l h_{l-1} + b_l)``. With
:math:`D_l = \mathrm{diag}(s'(u_l))` the Jacobian is :math:`J = W_{L+1} D_L W_L \cdots D_1 W_1`. The product is
taken from the code side (the code is small): :math:`M = W_{L+1} D_L W_L \cdots W_2` has one row per code unit,
then with :math:`G = W_1 W_1^\top`,

.. math::

    \|J\|_F^2 = \operatorname{tr}(M D_1 G D_1 M^\top),
    \qquad \text{and for one hidden layer} \quad \|J\|_F^2 = d_1^\top (W_2^\top W_2 \circ G)\, d_1,

which costs :math:`O(B H_1^2)` per batch instead of the :math:`O(B\,\dim z\, H_1 \dim x)` of a Jacobian.

References

- Ng, A. (2011). Sparse autoencoder. CS294A Lecture notes, Stanford University.
- Rifai, S., Vincent, P., Muller, X., Glorot, X. & Bengio, Y. (2011). Contractive Auto-Encoders: Explicit
  Invariance During Feature Extraction. ICML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..schema import NON_NEGATIVE, check_fields, documented, number_in, one_of

__all__ = [
    "ContractiveConfig",
    "SPARSITY_KINDS",
    "SparsityConfig",
    "activation_derivative",
    "contractive_penalty",
    "jacobian_frobenius_sq",
    "sparsity_penalty",
]

#: kinds of sparsity penalty
SPARSITY_KINDS = ("kl", "l1")


@documented
@dataclass(frozen=True)
class SparsityConfig:
    """A sparsity penalty on the code (the ``sparsity:`` option of a guide)."""

    #: kl: KL(target || mean sigmoid activation over the batch), summed over units; l1: sum of |z| per point
    kind: str = "kl"
    #: the penalty's weight (lambda)
    weight: float = 0.1
    #: kl: the target mean activation rho of each unit, in (0, 1)
    target: float = 0.05

    def __post_init__(self) -> None:
        check_fields(
            self, "guide.sparsity", kind=one_of(SPARSITY_KINDS), weight=NON_NEGATIVE,
            target=number_in(0, 1, low_open=True, high_open=True),
        )


@documented
@dataclass(frozen=True)
class ContractiveConfig:
    """The contractive penalty (the ``contractive:`` option of a guide with ``head: delta``)."""

    #: the penalty's weight (lambda) on the squared Frobenius norm of dz/dx
    weight: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, "guide.contractive", weight=NON_NEGATIVE)


def sparsity_penalty(code: torch.Tensor, config: SparsityConfig) -> torch.Tensor:
    """The sparsity penalty per data point, for codes ``(..., B, dim)`` (B: the data plate); shape ``(..., B)``."""
    if config.kind == "l1":
        return config.weight * code.abs().sum(-1)
    eps = torch.finfo(code.dtype).eps
    rho = config.target
    rho_hat = torch.sigmoid(code).mean(-2).clamp(eps, 1 - eps)  # (..., dim): each unit's mean over the batch
    kl = rho * (math.log(rho) - rho_hat.log()) + (1 - rho) * (math.log(1 - rho) - (1 - rho_hat).log())
    return (config.weight * kl.sum(-1)).unsqueeze(-1).expand(code.shape[:-1])


def _elu(m: nn.ELU, u: torch.Tensor) -> torch.Tensor:
    return torch.where(u > 0, torch.ones_like(u), m.alpha * u.exp())


def _softplus(m: nn.Softplus, u: torch.Tensor) -> torch.Tensor:
    # above the threshold, softplus is the identity
    return torch.where(u * m.beta > m.threshold, torch.ones_like(u), torch.sigmoid(m.beta * u))


def _gelu(m: nn.GELU, u: torch.Tensor) -> torch.Tensor:
    if m.approximate != "none":
        raise ValueError(f"the contractive penalty needs the exact GELU, got approximate={m.approximate!r}")
    return 0.5 * (1 + torch.erf(u / math.sqrt(2))) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


#: s'(u) for each activation module of ppl_vae.nets.ACTIVATIONS
_DERIVATIVES: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda m, u: (u > 0).to(u.dtype),
    nn.Tanh: lambda m, u: 1 - torch.tanh(u) ** 2,
    nn.Sigmoid: lambda m, u: torch.sigmoid(u) * (1 - torch.sigmoid(u)),
    nn.LeakyReLU: lambda m, u: torch.where(u > 0, torch.ones_like(u), torch.full_like(u, m.negative_slope)),
    nn.ELU: _elu,
    nn.Softplus: _softplus,
    nn.GELU: _gelu,
}


def activation_derivative(module: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """The elementwise derivative ``s'(u)`` of an activation module.

    :raises ValueError: for an activation without a derivative here.
    """
    derivative = _DERIVATIVES.get(type(module))
    if derivative is None:
        raise ValueError(f"the contractive penalty has no derivative for the activation {type(module).__name__}")
    return derivative(module, u)


def _layers(trunk: nn.Sequential) -> list[tuple[nn.Linear, nn.Module]]:
    mods = list(trunk)
    if len(mods) % 2 or not all(isinstance(lin, nn.Linear) for lin in mods[::2]):
        raise ValueError("the contractive penalty needs an MLP encoder: Linear and activation layers in turn")
    return list(zip(mods[::2], mods[1::2]))


def jacobian_frobenius_sq(trunk: nn.Sequential, out: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``||d out(trunk(x)) / dx||_F^2`` for each row of ``x`` ``(..., in_dim)``, exactly; shape ``(...)``.

    :param trunk: the encoder's hidden layers, ``Linear`` and activation modules in turn
        (:class:`~ppl_vae.nets.Trunk`).
    :param out: the linear map from the last hidden layer to the code.
    """
    layers = _layers(trunk)
    flat = x.reshape(-1, x.shape[-1])  # (N, in_dim)
    if not layers:  # the code is linear in x
        return out.weight.pow(2).sum().expand(x.shape[:-1])
    h, slopes = flat, []
    for linear, act in layers:
        u = linear(h)
        slopes.append(activation_derivative(act, u))  # (N, H_l)
        h = act(u)
    m = out.weight  # (dim_z, H_L), then (N, dim_z, H_l) once a layer's slopes enter
    for (linear, _), d in zip(reversed(layers[1:]), reversed(slopes[1:])):
        m = (m * d.unsqueeze(-2)) @ linear.weight  # (N, dim_z, H_{l-1})
    first = layers[0][0].weight  # (H_1, in_dim)
    gram = first @ first.T  # (H_1, H_1)
    d1 = slopes[0]
    if m.dim() == 2:  # one hidden layer: M = W_2 is shared by all points
        quad = (m.T @ m) * gram  # (H_1, H_1)
        norms = ((d1 @ quad) * d1).sum(-1)
    else:
        p = m * d1.unsqueeze(-2)  # (N, dim_z, H_1)
        norms = ((p @ gram) * p).sum((-2, -1))
    return norms.reshape(x.shape[:-1])


def contractive_penalty(trunk: nn.Sequential, out: nn.Linear, x: torch.Tensor, config: ContractiveConfig) -> torch.Tensor:
    """The contractive penalty per data point, ``weight * ||dz/dx||_F^2``, for flattened inputs ``(..., in_dim)``."""
    return config.weight * jacobian_frobenius_sq(trunk, out, x)
