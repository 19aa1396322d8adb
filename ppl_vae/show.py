"""Describe a compiled model and guide: their sites, shapes and dependencies, as text and as a graph.

Works on any Pyro model and guide, compiled from a spec or written by hand:
everything is read off Pyro traces (``poutine.trace``, ``format_shapes``,
``pyro.infer.inspect.get_dependencies``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.inspect import get_dependencies

from .compat import site_is_subsample
from .errors import ConfigError
from .guides.spec_guide import SpecGuide
from .inference.checks import check_estimator
from .inference.estimators import ESTIMATORS, make_estimator
from .models.spec_model import SpecModel
from .programs import as_modules

__all__ = ["site_table", "describe", "render_graph", "estimator_report"]


def _dist_name(fn) -> str:
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    return type(base).__name__


def _declared_parents(fn: Callable) -> dict[str, tuple[str, ...]] | None:
    """Parents as a spec declares them, for compiled spec models and guides; None otherwise."""
    if isinstance(fn, SpecModel):
        return {**{v.name: v.parents for v in fn.spec.latents}, "x": fn.spec.observed.parents}
    if isinstance(fn, SpecGuide):
        return {f.name: f.conditions_on for f in fn.spec.factors}
    return None


def site_table(fn: Callable, args: tuple, title: str) -> str:
    """A text table of ``fn``'s sample sites: distribution, batch and event shapes, and parents."""
    with torch.no_grad(), pyro.get_param_store().scope():
        trace = poutine.trace(fn).get_trace(*args)
        deps = _declared_parents(fn)
        if deps is None:
            try:
                deps = get_dependencies(fn, args)["prior_dependencies"]
            except Exception:  # provenance tracking is best effort for hand-written programs
                deps = {}
    rows = [("site", "distribution", "batch shape", "event shape", "observed", "depends on")]
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        parents = sorted(p for p in deps.get(name, {}) if p != name)
        rows.append(
            (
                name,
                _dist_name(site["fn"]),
                str(tuple(site["fn"].batch_shape)),
                str(tuple(site["fn"].event_shape)),
                "yes" if site["is_observed"] else "no",
                ", ".join(parents) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, "  " + "  ".join(c.ljust(w) for c, w in zip(rows[0], widths))]
    lines.append("  " + "  ".join("-" * w for w in widths))
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows[1:]]
    return "\n".join(lines)


def shapes(fn: Callable, args: tuple) -> str:
    """Pyro's ``format_shapes`` of one trace of ``fn``."""
    with torch.no_grad(), pyro.get_param_store().scope():
        trace = poutine.trace(fn).get_trace(*args)
        trace.compute_log_prob()
    return trace.format_shapes()


def describe(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> str:
    """Site tables and trace shapes of ``model`` and ``guide`` on a batch ``x`` (and labels ``y``)."""
    args = (x, y)
    parts = [
        site_table(model, args, "Model p:"),
        "",
        site_table(guide, args, "Guide q:"),
        "",
        "Model trace shapes:",
        shapes(model, args),
        "",
        "Guide trace shapes:",
        shapes(guide, args),
    ]
    return "\n".join(parts)


def render_graph(model: Callable, x: torch.Tensor, y: torch.Tensor | None, path: str | os.PathLike) -> Path | None:
    """Draw the model's graph with ``pyro.render_model`` when graphviz is installed; None otherwise."""
    if shutil.which("dot") is None:
        return None
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return None
    path = Path(path)
    with torch.no_grad(), pyro.get_param_store().scope():
        pyro.render_model(model, model_args=(x, y), filename=str(path), render_distributions=True)
    return path


def estimator_report(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, str | None]:
    """For every registry estimator, None when it can train ``model`` and ``guide``, else why ``fit`` would refuse it."""
    model, guide = as_modules(model, guide)
    report: dict[str, str | None] = {}
    for name in ESTIMATORS:
        try:
            with pyro.get_param_store().scope():
                check_estimator(make_estimator(name), model, guide, x, y)
            report[name] = None
        except ConfigError as err:
            report[name] = str(err)
    return report
