"""Pyro functions as modules, and models named by import path.

ppl_vae's tools train, checkpoint and move ``nn.Module`` s. A model or guide written as a plain Pyro
function keeps its state in Pyro's param store instead: the networks it registers with
``pyro.module`` and the tensors it creates with ``pyro.param`` (constrained or not, possibly only on
its first call). :class:`FunctionProgram` turns such a function into a module that owns that state:

- each call runs the function inside the program's own param-store scope, shared by a model and its
  guide (:func:`as_modules`), so nothing leaks into or out of the global store;
- every parameter the function creates becomes a parameter of the module (``pyro.module`` networks
  keep their own ``nn.Parameter`` objects; a bare ``pyro.param`` is adopted as an ``nn.Parameter``
  holding its unconstrained value), so an optimizer trains it, ``state_dict`` checkpoints it
  bit for bit and ``.to(device)`` moves it;
- :meth:`FunctionProgram.instantiate` calls the function once to create its lazy parameters.

The same function passed to the Python API again (``fit`` then ``evaluate``) gets the same program,
so its trained parameters are used, as Pyro's global store would do.

A model can also be named in a config by import path (:func:`load_target`): ``"my_models:gmm_vae"``
(a module on ``sys.path``) or ``"path/to/file.py:gmm_vae"`` (a file).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import random
import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyro
import torch
from torch import nn

from .errors import ConfigError
from .schema import documented

__all__ = [
    "FunctionProgram",
    "ParamScope",
    "PythonTarget",
    "as_module",
    "as_modules",
    "build_target",
    "load_target",
    "seeded",
    "target_of",
]


class ParamScope:
    """A param-store state of its own, entered around each call of the functions that share it."""

    def __init__(self) -> None:
        self.state: dict = {"params": {}, "constraints": {}}

    def names(self) -> list[str]:
        return list(self.state["params"])


def _escape(name: str) -> str:
    # ParameterDict keys may not contain "."; "%" is escaped first so that the mapping is one to one.
    return name.replace("%", "%25").replace(".", "%2E")


def _accepts_labels(fn: Callable) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.name == "y" for p in params)


class FunctionProgram(nn.Module):
    """A Pyro model or guide written as a function, as an ``nn.Module`` that owns its parameters.

    :param fn: the Pyro function ``fn(x, y=None)`` (or ``fn(x)``).
    :param ParamScope scope: the param-store state it runs in; a model and its guide share one.

    Attributes of ``fn`` are readable on the program (``program.x_shape`` when ``fn.x_shape`` is set), so
    a function declares capabilities (:mod:`ppl_vae.contract`) by attribute assignment.
    """

    def __init__(self, fn: Callable, scope: ParamScope | None = None) -> None:
        super().__init__()
        if isinstance(fn, nn.Module) or not callable(fn):
            raise TypeError(f"FunctionProgram wraps a plain callable, got {type(fn).__name__}")
        self.fn = fn
        self.scope = scope or ParamScope()
        self.params = nn.ParameterDict()
        self._passes_labels = _accepts_labels(fn)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            fn = self.__dict__.get("fn")
            if fn is not None and not name.startswith("_") and hasattr(fn, name):
                return getattr(fn, name)
            raise

    def __repr__(self) -> str:
        return f"FunctionProgram({target_of(self.fn) or self.fn!r}, {len(self.params)} parameters)"

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        call_args = (x, y, *args) if (self._passes_labels or args) else (x,)
        known = len(self.scope.state["params"])
        with pyro.get_param_store().scope(self.scope.state):
            out = self.fn(*call_args, **kwargs)
        if len(self.scope.state["params"]) != known:
            self._adopt(known)
        return out

    def instantiate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Call the function once on ``x`` (under a trace, no gradients) to create its lazy parameters."""
        from pyro import poutine

        with torch.no_grad():
            poutine.trace(self).get_trace(x, y)

    def _adopt(self, known: int) -> None:
        """Make the param-store entries this call created (those after the first ``known``) parameters of this
        module, and of the scope. A parameter belongs to the function that created it; a model and guide that
        share one still both use it."""
        params = self.scope.state["params"]
        for name, value in list(params.items())[known:]:
            if not isinstance(value, nn.Parameter):
                value = nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad)
                params[name] = value
            self.params[_escape(name)] = value

    def param_names(self) -> list[str]:
        """The param-store names of the parameters this program owns."""
        escaped = set(self.params.keys())
        return [name for name in self.scope.names() if _escape(name) in escaped]


_PROGRAMS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _cache_slot(fn: Callable) -> tuple[Any, Any] | None:
    """Where the program of ``fn`` is cached: bound methods by (instance, function), others by themselves."""
    owner, key = (fn.__self__, fn.__func__) if inspect.ismethod(fn) else (fn, None)
    try:
        weakref.ref(owner)
    except TypeError:
        return None
    return owner, key


def _cached(fn: Callable) -> FunctionProgram | None:
    slot = _cache_slot(fn)
    return None if slot is None else _PROGRAMS.get(slot[0], {}).get(slot[1])


def _remember(fn: Callable, program: FunctionProgram) -> None:
    slot = _cache_slot(fn)
    if slot is not None:
        _PROGRAMS.setdefault(slot[0], {})[slot[1]] = program


def as_module(fn: Any, scope: ParamScope | None = None) -> nn.Module:
    """An ``nn.Module`` for a model or guide: a module as it is, a function as its :class:`FunctionProgram`.

    The program of a function is remembered, so passing the same function again gives the same
    (trained) parameters.
    """
    if isinstance(fn, nn.Module):
        return fn
    if not callable(fn):
        raise ConfigError(f"a model or guide must be callable (a Pyro function or a PyroModule), got {type(fn).__name__}")
    program = _cached(fn)
    if program is None:
        program = FunctionProgram(fn, scope)
        _remember(fn, program)
    return program


def as_modules(model: Any, guide: Any) -> tuple[nn.Module, nn.Module]:
    """:func:`as_module` for a pair; two functions share one param-store scope (they may share parameters)."""
    model_m = as_module(model)
    shared = model_m.scope if isinstance(model_m, FunctionProgram) else None
    guide_m = _cached(guide) if not isinstance(guide, nn.Module) and callable(guide) else None
    if guide_m is None:
        guide_m = as_module(guide, shared)
    return model_m, guide_m


# -- import paths -------------------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    name = f"_ppl_vae_target_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str) -> Any:
    """Import ``name`` from ``sys.path`` or, as ``python -m`` would, from the working directory."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def load_target(target: str, what: str = "target") -> Any:
    """The object named ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (``attr`` may be dotted).

    A module is found on ``sys.path`` or in the working directory; a file path is relative to the working
    directory.

    :raises ConfigError: naming the target and what went wrong (malformed, not importable, no such
        attribute).
    """
    if not isinstance(target, str) or target.count(":") < 1 or not all(target.rsplit(":", 1)):
        raise ConfigError(f"{what} {target!r} must be 'module:name' or 'path/to/file.py:name'")
    where, attr = target.rsplit(":", 1)
    try:
        module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    except FileNotFoundError:
        raise ConfigError(f"{what} {target!r}: the file {where!r} does not exist") from None
    except Exception as err:  # an import error or any error raised by the module's code
        raise ConfigError(f"{what} {target!r}: cannot import {where!r} ({type(err).__name__}: {err})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {target!r}: {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def target_of(obj: Any) -> str | None:
    """The import path of a function or class (``"module:qualname"``, or ``"file.py:qualname"`` for a
    script run as ``__main__``), or None where there is none (a lambda, a nested function)."""
    if isinstance(obj, FunctionProgram):
        return target_of(obj.fn)
    if inspect.ismethod(obj) or isinstance(obj, functools.partial):
        return None
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    qualname = getattr(target, "__qualname__", "")
    module = getattr(target, "__module__", None)
    if not module or "<" in qualname:
        return None
    if module == "__main__" or module.startswith("_ppl_vae_target_"):
        source = getattr(sys.modules.get(module), "__file__", None)
        return f"{Path(source).resolve()}:{qualname}" if source else None
    return f"{module}:{qualname}"


# -- models and guides named in a config ---------------------------------------------------------


@documented
@dataclass(frozen=True)
class PythonTarget:
    """A model or guide written in Python, named by import path (``model:``/``guide:`` with ``name: python``).

    A class is instantiated with ``args`` (and, when its constructor takes them and ``args`` does not
    give them, ``x_shape``: the shape of one observation, and for a guide ``model``: the built model).
    A function is the model or guide itself, with ``args`` bound as keyword arguments; with
    ``factory: true`` it is called with ``args`` and returns the model or guide.
    """

    #: ``package.module:name`` or ``path/to/file.py:name``
    target: str = ""
    #: keyword arguments of the class, the factory or the function
    args: dict[str, Any] = field(default_factory=dict)
    #: the target is a function that builds and returns the model or guide
    factory: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or ":" not in self.target:
            raise ValueError(f"target must be 'module:name' or 'path/to/file.py:name', got {self.target!r}")
        if not isinstance(self.args, dict):
            raise ValueError(f"args must be a mapping of keyword arguments, got {self.args!r}")


def _call(what: str, target: str, fn: Callable, kwargs: dict) -> Any:
    try:
        return fn(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{what} {target!r}: cannot be built with args {sorted(kwargs)}: {err}") from None


def build_target(config: PythonTarget, what: str, **injectable: Any) -> Any:
    """Build the object a :class:`PythonTarget` names.

    :param str what: ``"model"`` or ``"guide"``, for messages.
    :param injectable: values passed to a class constructor that takes a parameter of that name
        (``x_shape``, ``model``) and does not get it from ``args``.
    :raises ConfigError: naming the target: not importable, not callable, or not buildable with ``args``.
    """
    obj = load_target(config.target, f"{what} target")
    if not callable(obj):
        raise ConfigError(f"{what} target {config.target!r} is not callable (a {type(obj).__name__})")
    if inspect.isclass(obj):
        try:
            accepted = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            accepted = {}
        extra = {k: v for k, v in injectable.items() if k in accepted and k not in config.args}
        return _call(what, config.target, obj, {**extra, **config.args})
    if config.factory:
        built = _call(what, config.target, obj, dict(config.args))
        if not callable(built):
            raise ConfigError(f"{what} target {config.target!r} is a factory (factory: true) but returned a {type(built).__name__}")
        return built
    return functools.partial(obj, **config.args) if config.args else obj


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch (and Pyro's other RNGs) inside the block and restore the global RNG states after it;
    with ``seed=None``, do nothing."""
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            pyro.set_rng_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
