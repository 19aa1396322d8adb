r"""Gradient statistics of an estimator on a fixed batch: mean, variance and signal-to-noise ratio.

For a fixed batch and parameters, each call of ``loss_and_grads`` gives an
independent draw :math:`g^{(r)}` of the gradient estimator. Over R draws, for each
scalar parameter :math:`j`,

.. math::

    \bar g_j = \frac{1}{R} \sum_r g^{(r)}_j, \qquad
    s_j^2 = \frac{1}{R - 1} \sum_r \big(g^{(r)}_j - \bar g_j\big)^2,

and each group of parameters (``encoder``: the guide's, ``decoder``: the model's,
by default) is summarised by

- ``mean_variance`` :math:`= \frac{1}{P} \sum_j s_j^2`;
- ``snr`` :math:`= \frac{1}{P'} \sum_{j: s_j > 0} |\bar g_j| / s_j`, the per-parameter
  signal-to-noise ratio averaged over the group, as Rainforth et al. (2018) report it
  (parameters whose gradient has no noise at all, :math:`s_j = 0`, are left out);
- ``snr_norm`` :math:`= \lVert \bar g \rVert / \sqrt{\sum_j s_j^2}`, a norm-based
  version that large, noiseless or tiny entries cannot dominate.

This is what ``ppl-vae compare-estimators`` reports. The gradients are in the
units of :func:`~ppl_vae.inference.fit.fit` (the loss in nats per data point).

References

- Rainforth, T., Kosiorek, A. R., Le, T. A., Maddison, C. J., Igl, M., Wood, F. & Teh, Y. W. (2018).
  Tighter Variational Bounds are Not Necessarily Better. ICML.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO

from ..contract import HasTrainableState, capability
from ..programs import as_modules
from ..schema import documented
from .checks import check_estimator
from .estimators import EstimatorConfig, make_estimator

__all__ = ["GradientStats", "GroupGradientStats", "gradient_stats"]


@documented
@dataclass(frozen=True)
class GroupGradientStats:
    """Gradient statistics of one group of parameters."""

    #: scalar parameters in the group
    num_params: int
    #: mean over scalar parameters of the gradient's variance over draws
    mean_variance: float
    #: mean over scalar parameters (with nonzero variance) of |mean| / std
    snr: float
    #: norm of the mean gradient / sqrt(sum of variances)
    snr_norm: float
    #: norm of the mean gradient
    mean_norm: float
    #: (num_params,) mean gradient, flattened in parameter order
    mean: torch.Tensor
    #: (num_params,) variance over draws (ddof 1)
    variance: torch.Tensor


@documented
@dataclass(frozen=True)
class GradientStats:
    """What :func:`gradient_stats` measured."""

    #: group name -> statistics
    groups: dict[str, GroupGradientStats]
    #: independent gradient draws
    num_draws: int
    #: mean loss over the draws, nats per data point
    loss_mean: float
    #: standard error of that mean
    loss_stderr: float
    #: wall time of one loss_and_grads call
    seconds_per_draw: float


class _Welford:
    """Running mean and sum of squared deviations of a vector, in float64."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(size, dtype=torch.float64, device=device)

    def add(self, value: torch.Tensor) -> None:
        value = value.to(torch.float64)
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def variance(self) -> torch.Tensor:
        return self.m2 / (self.n - 1)


def _summarize(w: _Welford) -> GroupGradientStats:
    """A group's statistics from its running moments."""
    if w.n == 0:  # an empty group
        empty = torch.zeros(0, dtype=torch.float64)
        return GroupGradientStats(0, float("nan"), float("nan"), float("nan"), 0.0, empty, empty)
    var = w.variance()
    std = var.sqrt()
    noisy = std > 0
    snr = float((w.mean[noisy].abs() / std[noisy]).mean()) if bool(noisy.any()) else float("nan")
    total_var = float(var.sum())
    mean_norm = float(w.mean.norm())
    return GroupGradientStats(
        num_params=w.mean.numel(),
        mean_variance=float(var.mean()),
        snr=snr,
        snr_norm=mean_norm / math.sqrt(total_var) if total_var > 0 else float("inf"),
        mean_norm=mean_norm,
        mean=w.mean.cpu(),
        variance=var.cpu(),
    )


def _flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def gradient_stats(
    model: Callable,
    guide: Callable,
    estimator: ELBO | EstimatorConfig | str,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_draws: int = 100,
    groups: Mapping[str, Iterable[torch.Tensor]] | None = None,
    *,
    seed: int | None = None,
) -> GradientStats:
    """Measure the mean, variance and SNR of an estimator's gradient on a fixed batch.

    Calls ``estimator.loss_and_grads(model, guide, x, y)`` ``num_draws`` times inside
    ``poutine.scale(1/B)``, as ``fit`` does, and accumulates each group's gradient.
    Parameters are not changed; their ``.grad`` is restored afterwards. Estimator
    state that learns from each call (a ``tracegraph`` running average) does move.
    :func:`~ppl_vae.inference.estimators.check_estimator` runs first, so an
    incompatible estimator raises :class:`~ppl_vae.errors.ConfigError`.

    :param model: a Pyro model, usually a ``PyroModule``.
    :param guide: its guide.
    :param estimator: a Pyro ELBO, an :class:`EstimatorConfig` or an estimator name (``"iwae:5:dreg"``).
    :param torch.Tensor x: the fixed batch ``(B, *x_shape)``.
    :param y: labels, or None.
    :param int num_draws: independent draws (at least 2). Defaults to 100.
    :param groups: name -> parameters. Defaults to ``{"encoder": guide.parameters(),
        "decoder": model.parameters()}``.
    :param int seed: seeds Pyro's RNGs first, when given.
    :returns: a :class:`GradientStats`.
    """
    if not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an int >= 2, got {num_draws!r}")
    elbo = make_estimator(estimator)
    model, guide = as_modules(model, guide)
    if groups is None:
        groups = {"encoder": guide.parameters(), "decoder": model.parameters()}
    group_params = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
    if seed is not None:
        pyro.set_rng_seed(seed)
    check_estimator(elbo, model, guide, x[:2], None if y is None else y[:2])
    state = capability(elbo, HasTrainableState)
    extra = state.trainable_module if state is not None else None
    everything = {id(p): p for params in group_params.values() for p in params}
    if extra is not None:
        everything.update({id(p): p for p in extra.parameters()})
    saved = {key: p.grad for key, p in everything.items()}
    stats = {name: _Welford(sum(p.numel() for p in params), x.device) for name, params in group_params.items()}
    losses = []
    start = time.perf_counter()
    try:
        with pyro.get_param_store().scope():
            for _ in range(num_draws):
                for p in everything.values():
                    p.grad = None
                with poutine.scale(scale=1.0 / x.shape[0]):
                    losses.append(float(elbo.loss_and_grads(model, guide, x, y)))
                for name, params in group_params.items():
                    if params:
                        stats[name].add(_flat_grad(params))
    finally:
        for key, p in everything.items():
            p.grad = saved[key]
    seconds = (time.perf_counter() - start) / num_draws
    out = {name: _summarize(w) for name, w in stats.items()}
    loss = torch.tensor(losses, dtype=torch.float64)
    return GradientStats(
        groups=out,
        num_draws=num_draws,
        loss_mean=float(loss.mean()),
        loss_stderr=float(loss.std() / math.sqrt(num_draws)),
        seconds_per_draw=seconds,
    )
