"""JIT-compiled estimators that stay correct across batch shapes and ``poutine.scale`` factors.

Pyro's JIT ELBOs compile on the first call and replay that graph; :class:`KeyedJit_ELBO` keeps one
compiled instance per model, guide, argument shapes and scale.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable

import torch
from pyro.infer import ELBO, JitTraceMeanField_ELBO

from ..compat import compiled_differentiable_loss, current_scale, jit_call_kwargs

__all__ = ["KeyedJit_ELBO", "FixedJitTraceMeanField_ELBO", "quiet_jit", "jit_key", "split_none", "with_none"]


def split_none(args: tuple) -> tuple[tuple[torch.Tensor, ...], tuple[bool, ...]]:
    """Tensors of ``args`` and where the Nones were (torch.jit.trace takes tensors only)."""
    pattern = tuple(a is None for a in args)
    for a in args:
        if a is not None and not torch.is_tensor(a):
            raise ValueError(f"JIT estimators take tensor (or None) arguments only, got {type(a).__name__}")
    return tuple(a for a in args if a is not None), pattern


def with_none(tensors: tuple, pattern: tuple[bool, ...]) -> tuple:
    it = iter(tensors)
    return tuple(None if is_none else next(it) for is_none in pattern)


def jit_key(model: Callable, guide: Callable, tensors: tuple, pattern: tuple) -> tuple:
    shapes = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
    return (id(model), id(guide), pattern, shapes, current_scale())


class quiet_jit(warnings.catch_warnings):
    """Silence torch's deprecation notice for ``torch.jit.trace``, on which Pyro's JIT ELBOs are built."""

    def __enter__(self):
        out = super().__enter__()
        warnings.filterwarnings("ignore", message=r"`torch.jit.trace` is deprecated", category=FutureWarning)
        return out


def _fill_none(fn: Callable, pattern: tuple[bool, ...]) -> Callable:
    def call(*tensors):
        return fn(*with_none(tensors, pattern))

    return call


class FixedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro 1.9.2's JitTraceMeanField_ELBO looks for its compiled function under another attribute than the
    one it stores it under, so it recompiles at every call; this one compiles once (see
    :func:`ppl_vae.compat.compiled_differentiable_loss`)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = compiled_differentiable_loss(self)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, **jit_call_kwargs(model, guide, kwargs))


class KeyedJit_ELBO(ELBO):
    """A Pyro JIT ELBO compiled once per model, guide, argument shapes and ``poutine.scale``.

    Pyro's JIT ELBOs compile on the first call and then replay that graph, with
    the model and guide and the scale of the first call baked in: after a batch of
    another size (the last batch of an epoch), the loss would silently keep the first
    batch's ``1/B``. This wrapper keeps one compiled instance per key (at most
    ``max_entries``, least recently used first out), and passes ``None`` arguments
    (``y=None``), which ``torch.jit.trace`` cannot take, outside the compiled graph.
    Each entry holds its model and guide. A wrapper that hands over a new model or
    guide callable at every step (as KL weighting with a schedule does) therefore
    compiles at every step: correct, but slower than the plain estimator.

    :param make: builds a fresh Pyro JIT ELBO; keyword arguments override its options
        (``make(vectorize_particles=False)``).
    """

    max_entries = 4

    def __init__(self, make: Callable[..., ELBO]) -> None:
        proto = make()
        super().__init__(num_particles=proto.num_particles, vectorize_particles=proto.vectorize_particles)
        self.max_plate_nesting = proto.max_plate_nesting
        self._make = make
        self._overrides: dict = {}
        self._entries: OrderedDict = OrderedDict()

    def draw_particles_one_at_a_time(self) -> None:
        """Compile from now on with ``vectorize_particles=False`` (a model that does not broadcast)."""
        self.vectorize_particles = False
        self._overrides = {"vectorize_particles": False}
        self._entries.clear()

    def _get_trace(self, model, guide, args, kwargs):
        """Not used: every call goes to a compiled instance."""
        raise NotImplementedError("KeyedJit_ELBO delegates to its compiled instances")

    def _entry(self, model: Callable, guide: Callable, args: tuple):
        tensors, pattern = split_none(args)
        key = jit_key(model, guide, tensors, pattern)
        entry = self._entries.get(key)
        if entry is None:
            entry = (self._make(**self._overrides), _fill_none(model, pattern), _fill_none(guide, pattern))
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry, tensors

    def loss(self, model, guide, *args, **kwargs):
        (elbo, m, g), tensors = self._entry(model, guide, args)
        return elbo.loss(m, g, *tensors, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        (elbo, m, g), tensors = self._entry(model, guide, args)
        with quiet_jit():
            return elbo.differentiable_loss(m, g, *tensors, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        (elbo, m, g), tensors = self._entry(model, guide, args)
        with quiet_jit():
            return elbo.loss_and_grads(m, g, *tensors, **kwargs)

