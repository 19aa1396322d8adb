"""Tracing helpers shared by the estimators, evaluation and the checks.

K particles per data point are drawn in one pass under a plate :data:`~ppl_vae.contract.PARTICLE_PLATE`
left of the model's plates (:func:`sample_traces`). A model or guide that does not broadcast over that
leading dimension is found once, on a two-point batch (:func:`broadcasts_particles`); the tools then
draw one particle per pass instead.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace

from ..compat import site_is_subsample
from ..contract import DATA_PLATE, PARTICLE_PLATE, ParticleLoopWarning

__all__ = [
    "dry_trace",
    "rng_devices",
    "latent_nodes",
    "max_plate_nesting",
    "sample_traces",
    "weight_sites",
    "per_datum",
    "broadcasts_particles",
]


def rng_devices(x: torch.Tensor) -> list[int]:
    """The CUDA devices whose RNG a pass over ``x`` draws from (for ``torch.random.fork_rng``)."""
    if x.device.type == "cuda":
        return [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    return []


def dry_trace(fn: Callable, x: torch.Tensor, y: torch.Tensor | None, grad: bool = False) -> Trace:
    """Trace ``fn(x, y)`` once, in a private param store, leaving the random number generators as they were."""
    with torch.random.fork_rng(devices=rng_devices(x)), pyro.get_param_store().scope(), torch.set_grad_enabled(grad):
        return poutine.trace(fn).get_trace(x, y)


def replayed_model_trace(model: Callable, guide_trace: Trace, x: torch.Tensor, y: torch.Tensor | None) -> Trace:
    """The model traced against a guide trace, privately, leaving the random number generators as they were."""
    with torch.random.fork_rng(devices=rng_devices(x)), pyro.get_param_store().scope(), torch.no_grad():
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)


def latent_nodes(trace: Trace) -> list[dict]:
    """The latent sample sites of a trace (not observed, not a plate's subsample site)."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]


def max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None) -> int:
    """The deepest plate nesting in model and guide, found by tracing one data point."""
    y1 = y[:1] if y is not None else None
    guide_trace = poutine.trace(guide).get_trace(x[:1], y1)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x[:1], y1)
    depth = 1
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        depth = max(depth, -frame.dim)
    return depth


def sample_traces(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, nesting: int,
    vectorized: bool = True,
) -> tuple[Trace, Trace]:
    """Run the guide ``num_samples`` times in one vectorized pass, and the model against it.

    The particles get a plate left of the model's plates, so every site has batch shape
    ``(num_samples, *plates)``. With ``vectorized=False`` (``num_samples`` must be 1) there is no
    particle plate, for a model or guide that does not broadcast. Log-densities are not computed yet.

    :returns: ``(model_trace, guide_trace)``.
    """
    if not vectorized:
        if num_samples != 1:
            raise ValueError("without vectorization, particles are drawn one per pass")
        guide_trace = poutine.trace(guide).get_trace(x, y)
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y), guide_trace
    with pyro.plate(PARTICLE_PLATE, num_samples, dim=-(nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def weight_sites(model_trace: Trace, guide_trace: Trace) -> tuple[list[dict], list[dict]]:
    """The model sites and the guide sites whose log-densities make up the log importance weight."""
    model_sites = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"] and name not in guide_trace.nodes:
            # A latent the guide leaves to the model is drawn from its prior: the proposal's
            # density equals the prior's, and the two cancel in the weight.
            continue
        model_sites.append(site)
    return model_sites, latent_nodes(guide_trace)


def per_datum(site: dict, nesting: int, shape: tuple[int, int], log_prob: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a site's batch-shaped log-prob (or ``log_prob``, of the same shape) to ``(num_samples, num_points)``."""
    data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not data_dims:
        raise ValueError(
            f"site {site['name']!r} is outside the {DATA_PLATE!r} plate; per-data-point bounds need every "
            "latent variable to be local to a data point"
        )
    data_dim = data_dims[0]
    lp = site["log_prob"] if log_prob is None else log_prob
    # left-pad to (particles, *plates)
    lp = lp.reshape((1,) * (nesting + 1 - lp.dim()) + tuple(lp.shape))
    other = [d for d in range(-nesting, 0) if d != data_dim]
    if other:
        lp = lp.sum(other, keepdim=True)
    # (K or 1, 1, ..., N or 1, 1, ...) -> (K, N)
    return lp.reshape(lp.shape[0], -1).expand(shape)


_PROBED: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _probe(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, nesting: int) -> str | None:
    """Why two particles on two points fail (an error, or wrong shapes), or None when they broadcast."""
    x2, y2 = x[:2], None if y is None else y[:2]
    try:
        with torch.random.fork_rng(devices=rng_devices(x)), torch.no_grad(), pyro.get_param_store().scope():
            model_trace, guide_trace = sample_traces(model, guide, x2, y2, 2, nesting)
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
            for site in weight_sites(model_trace, guide_trace)[0] + latent_nodes(guide_trace):
                per_datum(site, nesting, (2, x2.shape[0]))
    except Exception as err:  # any error from user code means "does not broadcast"
        return f"{type(err).__name__}: {err}"
    return None


def broadcasts_particles(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, nesting: int) -> bool:
    """Whether ``model`` and ``guide`` run with a leading particle dimension; warns once per pair when not.

    The answer is remembered for the pair (while both are alive).
    """
    try:
        memo = _PROBED.setdefault(model, {})
    except TypeError:
        memo = {}
    key = (id(guide), nesting)
    if key not in memo:
        reason = _probe(model, guide, x, y, nesting)
        if reason is not None:
            warnings.warn(
                f"the model or guide does not broadcast over a leading particle dimension ({reason}); "
                "ppl_vae draws the particles one at a time, which gives the same estimates more slowly. "
                "See docs/bring_your_own_model.md, 'Particles'",
                ParticleLoopWarning,
                stacklevel=3,
            )
        memo[key] = reason is None
    return memo[key]
