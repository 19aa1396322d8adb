"""Small tracing helpers shared by the estimators."""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.scale_messenger import ScaleMessenger

__all__ = ["dry_trace", "current_scale"]

def dry_trace(guide: Callable, x: torch.Tensor, y: Optional[torch.Tensor], grad: bool = False):
    """Trace the guide once, in a private param store, leaving the random number generators as they were."""
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices), pyro.get_param_store().scope(), torch.set_grad_enabled(grad):
        return poutine.trace(guide).get_trace(x, y)


def current_scale() -> float:
    """The product of the ``poutine.scale`` factors active now (compiled graphs hold it as a constant)."""
    scale = 1.0
    for frame in _PYRO_STACK:
        if isinstance(frame, ScaleMessenger):
            scale = scale * float(frame.scale)
    return scale
