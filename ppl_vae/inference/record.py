"""The config of a run made from Python, so that the CLI can reopen it.

``fit(model, guide, data, run_dir=...)`` called from Python writes ``config.yaml`` into the run
directory when there is none, in the format of :mod:`ppl_vae.config`:

- a registry model or guide (``vae``, ``spec``, ``amortized``) is recorded with its config;
- any other model or guide is ``name: python`` with the import path it came from (a function's
  ``module:name``; for a script, ``path/to/script.py:name``) and, for a module that records them
  (:class:`~ppl_vae.contract.Rebuildable`), its constructor's ``args``;
- the data are recorded when :func:`~ppl_vae.data.load_dataset` made them; a tensor passed from
  Python is marked (``run.python_data``), and the CLI then says it cannot reload it;
- a registry estimator is recorded with its options, KL weighting as ``kl_weighting``; an estimator
  built by hand is named in ``run.hand_built_estimator``.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..contract import Rebuildable, capability, estimator_chain
from ..data import Dataset
from ..guides import GUIDES
from ..models import MODELS
from ..programs import FunctionProgram, target_of
from ..schema import as_mapping, plain
from .estimators import registry_config
from .evaluate import EvalConfig
from .objectives import KLWeighted_ELBO
from .semisup import SemiSupervised_ELBO
from .training import OptimConfig, TrainConfig

__all__ = ["record_config", "NotReopenableWarning"]


class NotReopenableWarning(UserWarning):
    """A run made from Python names a model or guide without an import path; the CLI cannot reopen it."""


def _component(obj: nn.Module, registry: dict, what: str) -> dict:
    for name, entry in registry.items():
        if entry.cls is not None and type(obj) is entry.cls:
            return {"name": name, **as_mapping(entry.config_of(obj))}
    inner = obj.fn if isinstance(obj, FunctionProgram) else obj
    target = target_of(inner)
    if target is None:
        warnings.warn(
            f"the {what} ({inner!r}) has no import path (a lambda, a nested function, a bound method or a partial), "
            "so the CLI cannot reopen this run; define it at the top level of a module or script",
            NotReopenableWarning,
            stacklevel=4,
        )
        target = f"<not importable: {type(inner).__name__}>"
    rebuildable = capability(inner, Rebuildable)
    args = plain(dict(rebuildable.init_args)) if rebuildable is not None and not isinstance(inner, FunctionProgram) else {}
    return {"name": "python", "target": target, "args": args}


def _estimator(elbo: Any) -> tuple[dict, dict, str | None]:
    """The estimator and kl_weighting sections, and a description of a hand-built estimator."""
    kl: dict = {}
    for e in estimator_chain(elbo):
        if isinstance(e, KLWeighted_ELBO):
            kl = as_mapping(e.weighting)
        elif isinstance(e, SemiSupervised_ELBO):
            continue
        config = registry_config(e)
        if config is not None:
            return {"name": config.name, **as_mapping(config.options)}, kl, None
    return {}, kl, type(elbo).__name__


def record_config(model: nn.Module, guide: nn.Module, data: Dataset, estimator: Any, optim: OptimConfig, train: TrainConfig) -> dict:
    """The config mapping of a run trained from Python (see the module docstring)."""
    est, kl, hand_built = _estimator(estimator)
    out: dict[str, Any] = {}
    if data.config is not None:
        out["data"] = as_mapping(data.config)
    out["model"] = _component(model, MODELS, "model")
    out["guide"] = _component(guide, GUIDES, "guide")
    if est:
        out["estimator"] = est
    if kl:
        out["kl_weighting"] = kl
    out["optim"] = as_mapping(optim)
    out["train"] = as_mapping(train)
    out["eval"] = as_mapping(EvalConfig())
    out["run"] = {"python_data": data.config is None, "hand_built_estimator": hand_built}
    return out
