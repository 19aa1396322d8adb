"""Refuse, before training, an estimator that cannot train a model and guide; prepare its state.

The rules belong to the registry entries (:data:`~ppl_vae.inference.estimators.ESTIMATORS`): each
entry lists the refusals that apply to a guide site, and flags the checks that need a whole trace.
This module runs them on one trace of the guide and of the model against it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.infer import ELBO, TraceEnum_ELBO

from ..contract import Prepares, capability, estimator_chain
from ..errors import ConfigError
from ..programs import FunctionProgram
from .estimators import ESTIMATORS, registry_config
from .semisup import SemiSupervised_ELBO
from .tracing import dry_trace, latent_nodes, replayed_model_trace

__all__ = ["check_estimator"]


def _model_enumerated(model_trace, guide_trace, label: str) -> None:
    """Sites the model enumerates and the guide does not cover are summed out by enum alone."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in guide_trace.nodes:
            continue
        if site["infer"].get("enumerate"):
            raise ConfigError(
                f"the model enumerates site {name!r} (enumerate: true), which only the enum estimators sum out; "
                f"estimator {label} would sample it from its prior, and its prior would get no gradient. Use enum "
                f"or jit_enum, or give the guide a factor for {name!r}"
            )


def _dreg_independent(guide: Callable, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """DReG drops the derivative through upstream samples, so no guide site may feed another."""
    trace = dry_trace(guide, x, y, grad=True)
    values = [(s["name"], s["value"]) for s in latent_nodes(trace)]
    for j, (name_j, value_j) in enumerate(values):
        for name_i, value_i in values[:j]:
            if value_i.requires_grad and value_j.requires_grad:
                (grad,) = torch.autograd.grad(value_j.sum(), value_i, retain_graph=True, allow_unused=True)
                if grad is not None:
                    raise ConfigError(
                        f"iwae with gradient dreg needs guide sites that do not feed one another, but guide site "
                        f"{name_j!r} depends on {name_i!r}; use gradient: reparam"
                    )


def _model_order(model_trace, guide_sites: list[str], label: str) -> None:
    """Analytic KL terms are right only when the guide samples in the model's order.

    Otherwise KL(q(a|...) || p(a|b)) would be taken at a ``b`` that was itself drawn given ``a``.
    """
    model_order = [n for n, s in model_trace.nodes.items() if n in guide_sites and s["type"] == "sample"]
    for guide_name, model_name in zip(guide_sites, model_order):
        if guide_name != model_name:
            raise ConfigError(
                f"estimator {label} needs the guide to sample its sites in the model's order, but guide site "
                f"{guide_name!r} comes before {model_name!r} in the guide and after it in the model (the analytic "
                "KL would be biased); use trace, or order the guide like the model"
            )


def _check_one(estimator: ELBO, model, guide, x, y, guide_trace, model_trace, leaf: bool) -> None:
    config = registry_config(estimator)
    if config is None:
        # An ELBO built by hand: only the rule that holds for every estimator but TraceEnum_ELBO.
        if leaf and not isinstance(estimator, TraceEnum_ELBO):
            _model_enumerated(model_trace, guide_trace, type(estimator).__name__)
        return
    entry, label = ESTIMATORS[config.name], config.name
    if entry.compiles and any(isinstance(m, FunctionProgram) for m in (model, guide)):
        twin = label.removeprefix("jit_")
        raise ConfigError(
            f"estimator {label} compiles the model and guide with torch.jit.trace, which looks their parameters up "
            f"in Pyro's global param store; the parameters of a model or guide written as a function are kept out "
            f"of it (see docs/bring_your_own_model.md). Use {twin}, or write the model and guide as PyroModules"
        )
    latents = latent_nodes(guide_trace)
    for site in latents:
        for rule in entry.site_rules:
            message = rule(site, config.options, label)
            if message:
                raise ConfigError(message)
    if not entry.enumerates:
        _model_enumerated(model_trace, guide_trace, label)
    if entry.dreg and getattr(config.options, "gradient", None) == "dreg":
        _dreg_independent(guide, x, y)
    if entry.model_order:
        _model_order(model_trace, [s["name"] for s in latents], label)


def check_estimator(estimator: Any, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Refuse, before training, an estimator that cannot train the model and guide; prepare its state.

    Traces the guide once on a couple of data points, and the model against it, and applies the rules
    of each registry estimator in the chain (wrappers such as KL weighting are looked through). Refused,
    with a :class:`~ppl_vae.errors.ConfigError` naming the site, are for example:

    - ``trace``, ``iwae`` (and their JIT twins) with a non-reparameterized guide site, unless
      ``allow_score_function`` is set; ``meanfield`` and ``renyi`` with one in any case;
    - ``enum`` with a site that is neither reparameterizable nor enumerable;
    - ``iwae`` with a latent outside the ``data`` plate; with ``gradient: dreg``, a
      non-reparameterized site, a transformed (flow) site, or sites that feed one another;
    - every estimator but ``enum`` with a site the model enumerates, or a guide site marked for
      enumeration.

    Then estimators with a ``prepare(model, guide, x, y)`` method build their learned state
    (``tracegraph`` baselines), before ``fit`` makes its optimizer.
    """
    chain = estimator_chain(estimator)
    if any(isinstance(e, SemiSupervised_ELBO) for e in chain):
        y = None  # semi-supervised: the label is a latent site only where it is hidden, the case to check
    guide_trace = dry_trace(guide, x, y)
    model_trace = replayed_model_trace(model, guide_trace, x, y)
    for e in chain:
        _check_one(e, model, guide, x, y, guide_trace, model_trace, leaf=e is chain[-1])
    for e in chain:
        prepared = capability(e, Prepares)
        if prepared is not None:
            prepared.prepare(model, guide, x, y)
