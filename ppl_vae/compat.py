"""Every use of a private or internal Pyro API, in one place, with the reason for each.

ppl_vae is tested with the Pyro versions pinned in ``pyproject.toml``. When Pyro changes one of the
names below, this module is the only one to fix; ``tests/test_architecture.py`` checks that no other
module reaches into Pyro's private names.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import MultiFrameTensor
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

__all__ = [
    "MultiFrameTensor",
    "current_scale",
    "conditional_params",
    "conditioned_params",
    "compiled_differentiable_loss",
    "detach_provenance",
    "elbo_trace",
    "elbo_traces",
    "get_provenance",
    "is_identically_zero",
    "scale_and_mask",
    "site_is_subsample",
    "warn_if_nan",
]

# Re-exported internals, each used where Pyro offers no public equivalent:
# - site_is_subsample (pyro.poutine.util): tells a plate's subsample site from a sample site when
#   walking a trace, as Pyro's own ELBOs do.
# - scale_and_mask, is_identically_zero (pyro.distributions.util): the per-data-point IWAE weights
#   need log-densities with their mask and without their scale.
# - MultiFrameTensor, get_provenance, detach_provenance (pyro.infer.util, pyro.ops.provenance): the
#   Rao-Blackwellized downstream costs of TraceGraph_ELBO, which BaselineTraceGraph_ELBO rebuilds so
#   that its baselines can live outside the guide.
# - warn_if_nan (pyro.util): the same NaN warning as Pyro's ELBOs.


def current_scale() -> float:
    """The product of the ``poutine.scale`` factors active now.

    Needed because a JIT-compiled loss holds the scale of its first call as a constant, so compiled
    graphs are keyed by it. Pyro keeps the active handlers in the private ``_PYRO_STACK``.
    """
    scale = 1.0
    for frame in _PYRO_STACK:
        if isinstance(frame, ScaleMessenger):
            scale = scale * float(frame.scale)
    return scale


def elbo_traces(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """The (model trace, guide trace) pairs an ELBO draws, one per particle (``ELBO._get_traces``).

    Needed by objectives that reassemble a loss from another ELBO's traces (free bits), and by the
    baselined score-function estimator.
    """
    return elbo._get_traces(model, guide, args, kwargs)


def elbo_trace(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """One (model trace, guide trace) pair of an ELBO (``ELBO._get_trace``), for wrappers that delegate it."""
    return elbo._get_trace(model, guide, args, kwargs)


def compiled_differentiable_loss(elbo: ELBO) -> Callable | None:
    """The function Pyro's ``JitTraceMeanField_ELBO`` compiled on its first call, or None before it.

    Pyro 1.9 looks for it under another attribute than the one it stores it under, and so recompiles
    at every call; ppl_vae's fixed subclass reads it from here.
    """
    return elbo.__dict__.get("_differentiable_loss")


def jit_call_kwargs(model: Callable, guide: Callable, kwargs: dict) -> dict:
    """The keyword arguments Pyro's compiled JIT losses expect (ids of the model and guide)."""
    return {**kwargs, "_pyro_model_id": id(model), "_pyro_guide_id": id(guide)}


def conditioned_params(transform: Any) -> Any:
    """The parameters of a conditioned planar or radial transform (Pyro keeps them in ``_params``)."""
    params = transform._params
    return params() if callable(params) else params


def conditional_params(module: Any, context: torch.Tensor) -> Callable[[], Any]:
    """A thunk giving a conditional planar or radial module's parameters at ``context`` (its ``_params``)."""
    return lambda: module._params(context)
