r"""The registry of ELBO estimators, chosen by name (``estimator.name`` in configs).

Every entry builds a Pyro ELBO object from an :class:`EstimatorConfig`; ``fit``
calls its ``loss_and_grads`` inside ``poutine.scale(1/B)``.

================== =====================================================================
name               estimator
================== =====================================================================
``trace``          :class:`~pyro.infer.Trace_ELBO`: pathwise gradients
``meanfield``      :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL where one exists
``tracegraph``     :class:`BaselineTraceGraph_ELBO`: Rao-Blackwellized score function for
                   non-reparameterized guide sites, with a baseline per site
                   (``none`` | ``avg`` | ``nn``)
``enum``           :class:`AutoEnum_ELBO`: :class:`~pyro.infer.TraceEnum_ELBO` with every
                   enumerable guide site enumerated in parallel
``iwae``           :class:`~ppl_vae.inference.iwae.IWAE_ELBO`: the importance-weighted bound
                   per data point, plain or DReG gradients
``renyi``          :class:`~pyro.infer.RenyiELBO` with its ``alpha`` (note: Pyro sums the log
                   weights over the batch before the log-sum-exp; see ``iwae``; and its
                   score-function term is wrong, so non-reparameterized sites are refused)
``jit_*``          the same, compiled with ``torch.jit.trace`` (``trace``, ``meanfield``,
                   ``tracegraph``, ``enum``); one compilation per argument shape and scale
================== =====================================================================

Estimator names on the command line carry arguments after colons, parsed by
:func:`parse_estimator`: ``trace:10`` (10 particles), ``tracegraph:avg``,
``tracegraph:nn:4``, ``iwae:5``, ``iwae:50:dreg``, ``renyi:0.5``, ``renyi:0.5:8``;
any field can also be given as ``key=value`` (``tracegraph:nn:baseline_beta=0.95``).
``K`` defaults to ``estimator.num_particles`` (1), so plain ``iwae`` is the ELBO.

Before training, :func:`check_estimator` refuses an estimator that cannot train
the guide's sample sites, naming the site, and lets estimators with learned state
(neural baselines) build it, so ``fit`` puts it in the optimizer and checkpoints.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, NamedTuple, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions import TransformedDistribution
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError
from ..nets import ACTIVATIONS, check_choice
from .baselines import BaselineTraceGraph_ELBO, SiteBaseline
from .iwae import IWAE_ELBO, IWAE_GRADIENTS
from .jit import KeyedJit_ELBO, _FixedJitTraceMeanField_ELBO
from .tracing import dry_trace

__all__ = [
    "ESTIMATORS",
    "BASELINES",
    "EstimatorConfig",
    "EstimatorEntry",
    "AutoEnum_ELBO",
    "BaselineTraceGraph_ELBO",
    "JitAutoEnum_ELBO",
    "KeyedJit_ELBO",
    "SiteBaseline",
    "check_estimator",
    "make_estimator",
    "parse_estimator",
]

#: Baselines of a non-reparameterized guide site under ``tracegraph``.
BASELINES = ("none", "avg", "nn")
#: What a neural baseline sees.
BASELINE_INPUTS = ("x", "x_and_upstream")
_TRACEGRAPH_NAMES = ("tracegraph", "jit_tracegraph")


@dataclass(frozen=True)
class EstimatorConfig:
    """Which gradient estimator trains the model (the ``estimator:`` section)."""

    name: str = "trace"  # a key of ESTIMATORS
    num_particles: int = 1  # Monte-Carlo samples per data point and step (K of iwae and renyi)
    vectorize_particles: bool = True  # draw the particles in one vectorized pass
    max_plate_nesting: int = 1  # plates in the model; the particle plate goes left of them
    allow_score_function: bool = False  # trace/meanfield/iwae/renyi: train discrete guide sites by plain REINFORCE
    baseline: str = "none"  # tracegraph: baseline of each non-reparameterized guide site: none | avg | nn
    site_baselines: Optional[dict[str, str]] = None  # tracegraph: per-site overrides {site: none|avg|nn}
    baseline_beta: float = 0.9  # tracegraph avg/nn: decay of the running average of the learning signal
    baseline_hidden_dims: tuple[int, ...] = (64,)  # tracegraph nn: hidden layers of each site's baseline network
    baseline_activation: str = "tanh"  # tracegraph nn: activation, a key of ppl_vae.nets.ACTIVATIONS
    baseline_input: str = "x"  # tracegraph nn: x (the flattened point) | x_and_upstream (and earlier guide latents)
    alpha: float = 0.0  # renyi: order of the alpha-divergence (not 1)
    gradient: str = "reparam"  # iwae: reparam | dreg (doubly reparameterized, for the guide)

    def __post_init__(self) -> None:
        check_choice("estimator", self.name, ESTIMATORS)
        for key in ("num_particles", "max_plate_nesting"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"estimator.{key} must be a positive int, got {value!r}")
        for key in ("vectorize_particles", "allow_score_function"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"estimator.{key} must be true or false, got {getattr(self, key)!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"estimator.baseline must be one of {list(BASELINES)}, got {self.baseline!r}")
        if self.site_baselines is not None:
            if not isinstance(self.site_baselines, dict):
                raise ValueError(
                    f"estimator.site_baselines must be a mapping site -> baseline, got {self.site_baselines!r}"
                )
            for site, choice in self.site_baselines.items():
                if not isinstance(site, str) or choice not in BASELINES:
                    raise ValueError(
                        f"estimator.site_baselines[{site!r}] must be one of {list(BASELINES)}, got {choice!r}"
                    )
            object.__setattr__(self, "site_baselines", dict(self.site_baselines))
        if not (isinstance(self.baseline_beta, (int, float)) and 0 <= self.baseline_beta < 1):
            raise ValueError(f"estimator.baseline_beta must be in [0, 1), got {self.baseline_beta!r}")
        if not isinstance(self.baseline_hidden_dims, (tuple, list)) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.baseline_hidden_dims
        ):
            raise ValueError(
                f"estimator.baseline_hidden_dims must be a list of positive ints, got {self.baseline_hidden_dims!r}"
            )
        object.__setattr__(self, "baseline_hidden_dims", tuple(self.baseline_hidden_dims))
        if self.baseline_activation not in ACTIVATIONS:
            raise ValueError(
                f"estimator.baseline_activation must be one of {sorted(ACTIVATIONS)}, got {self.baseline_activation!r}"
            )
        if self.baseline_input not in BASELINE_INPUTS:
            raise ValueError(
                f"estimator.baseline_input must be one of {list(BASELINE_INPUTS)}, got {self.baseline_input!r}"
            )
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha != 1):
            raise ValueError(f"estimator.alpha must be a finite number other than 1, got {self.alpha!r}")
        if self.gradient not in IWAE_GRADIENTS:
            raise ValueError(f"estimator.gradient must be one of {list(IWAE_GRADIENTS)}, got {self.gradient!r}")
        # Options that only one estimator reads are refused elsewhere, rather than silently ignored.
        if self.gradient != "reparam" and self.name != "iwae":
            raise ValueError(
                f"estimator.gradient={self.gradient!r} applies to iwae only, got estimator.name={self.name!r}"
            )
        if (self.baseline != "none" or self.site_baselines) and self.name not in _TRACEGRAPH_NAMES:
            raise ValueError(
                f"estimator.baseline={self.baseline!r} / site_baselines apply to tracegraph only, "
                f"got estimator.name={self.name!r}"
            )
        if self.alpha != 0 and self.name != "renyi":
            raise ValueError(f"estimator.alpha={self.alpha!r} applies to renyi only, got estimator.name={self.name!r}")


# ---------------------------------------------------------------------------------------------
# Helpers, and the JIT variants
# ---------------------------------------------------------------------------------------------





# ---------------------------------------------------------------------------------------------
# enum: every enumerable guide site enumerated
# ---------------------------------------------------------------------------------------------


class _EnumerateGuide:
    """Mixin: run the guide under ``config_enumerate(default="parallel")``, so no guide needs editing."""

    def _enumerated(self, guide: Callable) -> Callable:
        if getattr(guide, "_ppl_vae_enumerated", False):
            return guide
        cache = self.__dict__.setdefault("_enumerated_guides", weakref.WeakKeyDictionary())
        try:
            wrapped = cache.get(guide)
        except TypeError:  # not weak-referenceable
            return config_enumerate(guide, default="parallel")
        if wrapped is None:
            wrapped = config_enumerate(guide, default="parallel")
            wrapped._ppl_vae_enumerated = True
            cache[guide] = wrapped
        return wrapped

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, self._enumerated(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(model, self._enumerated(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, self._enumerated(guide), *args, **kwargs)


class AutoEnum_ELBO(_EnumerateGuide, TraceEnum_ELBO):
    """:class:`~pyro.infer.TraceEnum_ELBO` with every enumerable guide site enumerated in parallel.

    Sites that already say how to enumerate keep their setting. The expectation
    over enumerated sites is exact; reparameterized sites are sampled.
    """


class JitAutoEnum_ELBO(_EnumerateGuide, JitTraceEnum_ELBO):
    """:class:`AutoEnum_ELBO` compiled with :class:`~pyro.infer.JitTraceEnum_ELBO`."""


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def _common(config: EstimatorConfig) -> dict:
    return dict(
        num_particles=config.num_particles,
        vectorize_particles=config.vectorize_particles,
        max_plate_nesting=config.max_plate_nesting,
    )


def _tag(elbo: ELBO, config: EstimatorConfig) -> ELBO:
    """Record the config on the ELBO, so :func:`check_estimator` knows its options."""
    elbo.estimator_config = config
    elbo.allow_score_function = config.allow_score_function
    return elbo


def _build_trace(config):
    return _tag(Trace_ELBO(**_common(config)), config)


def _build_meanfield(config):
    return _tag(TraceMeanField_ELBO(**_common(config)), config)


def _build_enum(config):
    return _tag(AutoEnum_ELBO(strict_enumeration_warning=False, **_common(config)), config)


def _build_tracegraph(config, jit: bool = False):
    elbo = BaselineTraceGraph_ELBO(
        baseline=config.baseline,
        site_baselines=config.site_baselines,
        baseline_beta=config.baseline_beta,
        baseline_hidden_dims=config.baseline_hidden_dims,
        baseline_activation=config.baseline_activation,
        baseline_input=config.baseline_input,
        jit=jit,
        **_common(config),
    )
    return _tag(elbo, config)


def _build_iwae(config):
    elbo = IWAE_ELBO(gradient=config.gradient, allow_score_function=config.allow_score_function, **_common(config))
    return _tag(elbo, config)


def _build_renyi(config):
    return _tag(RenyiELBO(alpha=config.alpha, **_common(config)), config)


def _jit(cls: type, kind: str, **extra) -> Callable[[EstimatorConfig], ELBO]:
    def build(config: EstimatorConfig) -> ELBO:
        return _tag(KeyedJit_ELBO(lambda: cls(ignore_jit_warnings=True, **extra, **_common(config)), kind), config)

    return build


def _int_arg(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be a positive int, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be a positive int, got {text!r}")
    return value


def _parse_particles(name: str, args: list[str]) -> dict:
    if len(args) > 1:
        raise ValueError(f"estimator {name!r} takes at most one argument (:K, the particles), got {args}")
    return {"num_particles": _int_arg(args[0], f"{name}:K (particles)")} if args else {}


def _parse_tracegraph(name: str, args: list[str]) -> dict:
    out: dict = {}
    for arg in args:
        if arg in BASELINES and "baseline" not in out:
            out["baseline"] = arg
        elif arg.isdigit() and "num_particles" not in out:
            out["num_particles"] = _int_arg(arg, f"{name}:K (particles)")
        else:
            raise ValueError(f"estimator {name!r} takes [:{'|'.join(BASELINES)}][:K], got {':'.join([name, *args])!r}")
    return out


def _parse_iwae(name: str, args: list[str]) -> dict:
    out: dict = {}
    for arg in args:
        if arg in IWAE_GRADIENTS and "gradient" not in out:
            out["gradient"] = arg
        elif arg.isdigit() and "num_particles" not in out:
            out["num_particles"] = _int_arg(arg, "iwae:K (importance samples)")
        else:
            syntax = "|".join(IWAE_GRADIENTS)
            raise ValueError(f"estimator 'iwae' takes [:K][:{syntax}], got {':'.join([name, *args])!r}")
    return out


def _parse_renyi(name: str, args: list[str]) -> dict:
    if len(args) > 2:
        raise ValueError(f"estimator 'renyi' takes [:ALPHA][:K], got {':'.join([name, *args])!r}")
    out: dict = {}
    if args:
        try:
            out["alpha"] = float(args[0])
        except ValueError:
            raise ValueError(f"renyi:ALPHA must be a number, got {args[0]!r}") from None
    if len(args) == 2:
        out["num_particles"] = _int_arg(args[1], "renyi:ALPHA:K (particles)")
    return out


class EstimatorEntry(NamedTuple):
    """A registry entry: how to build the estimator, and how to read its ``name:arg`` arguments."""

    build: Callable[[EstimatorConfig], ELBO]  # config -> ELBO object
    parse_args: Callable[[str, list[str]], dict]  # (name, colon-separated args) -> EstimatorConfig fields
    syntax: str  # the argument syntax, for help texts
    summary: str  # one line, for help texts


#: Registry of estimators: name -> :class:`EstimatorEntry`.
ESTIMATORS: dict[str, EstimatorEntry] = {
    "trace": EstimatorEntry(_build_trace, _parse_particles, "trace[:K]", "Trace_ELBO, pathwise gradients"),
    "meanfield": EstimatorEntry(
        _build_meanfield, _parse_particles, "meanfield[:K]", "TraceMeanField_ELBO, analytic KL"
    ),
    "tracegraph": EstimatorEntry(
        _build_tracegraph, _parse_tracegraph, "tracegraph[:none|avg|nn][:K]", "score function with baselines"
    ),
    "enum": EstimatorEntry(
        _build_enum, _parse_particles, "enum[:K]", "TraceEnum_ELBO, discrete guide sites enumerated"
    ),
    "iwae": EstimatorEntry(_build_iwae, _parse_iwae, "iwae[:K][:reparam|dreg]", "importance-weighted bound, per point"),
    "renyi": EstimatorEntry(_build_renyi, _parse_renyi, "renyi[:ALPHA][:K]", "RenyiELBO (batch-summed weights)"),
    "jit_trace": EstimatorEntry(_jit(JitTrace_ELBO, "pathwise"), _parse_particles, "jit_trace[:K]", "trace, compiled"),
    "jit_meanfield": EstimatorEntry(
        _jit(_FixedJitTraceMeanField_ELBO, "meanfield"), _parse_particles, "jit_meanfield[:K]", "meanfield, compiled"
    ),
    "jit_tracegraph": EstimatorEntry(
        lambda config: _build_tracegraph(config, jit=True),
        _parse_tracegraph,
        "jit_tracegraph[:none|avg|nn][:K]",
        "tracegraph, compiled",
    ),
    "jit_enum": EstimatorEntry(
        _jit(JitAutoEnum_ELBO, "enum", strict_enumeration_warning=False),
        _parse_particles,
        "jit_enum[:K]",
        "enum, compiled",
    ),
}


def _coerce_field(key: str, text: str) -> Any:
    kinds = {f.name: f.type for f in fields(EstimatorConfig)}
    if key not in kinds or key == "name":
        raise ValueError(f"unknown estimator option {key!r}; expected one of {sorted(k for k in kinds if k != 'name')}")
    kind = str(kinds[key])
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"estimator option {key} must be true or false, got {text!r}")
        return text.lower() == "true"
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"estimator option {key} must be an int, got {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"estimator option {key} must be a number, got {text!r}") from None
    if kind.startswith("tuple"):
        try:
            return tuple(int(v) for v in text.split(",") if v)
        except ValueError:
            raise ValueError(f"estimator option {key} must be comma-separated ints, got {text!r}") from None
    if kind == "str":
        return text
    raise ValueError(f"estimator option {key} cannot be given on the command line")


def parse_estimator(text: str, base: Optional[EstimatorConfig] = None) -> EstimatorConfig:
    """Read ``name[:arg...]`` (e.g. ``tracegraph:avg``, ``iwae:5:dreg``, ``renyi:0.5``) into a config.

    Positional arguments follow each entry's syntax (:attr:`EstimatorEntry.syntax`);
    ``key=value`` arguments set any other field. Fields not given come from ``base``
    (defaults to ``EstimatorConfig()``).

    :raises ValueError: for an unknown name, a bad argument, or an invalid value, naming it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an estimator name is required, e.g. one of {sorted(ESTIMATORS)}; got {text!r}")
    name, *args = text.strip().split(":")
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r} in {text!r}; expected one of {sorted(ESTIMATORS)}")
    positional = [a for a in args if "=" not in a]
    options = {}
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            options[key.strip()] = _coerce_field(key.strip(), value.strip())
    if any(not a for a in positional):
        raise ValueError(f"empty argument in estimator {text!r}")
    values = ESTIMATORS[name].parse_args(name, positional)
    values.update(options)
    base = base or EstimatorConfig()
    # Options of another estimator in the base would be refused; start from the neutral values.
    neutral = dict(gradient="reparam", baseline="none", site_baselines=None, alpha=0.0)
    kept = {k: v for k, v in neutral.items() if getattr(base, k) != v and not _applies(k, name)}
    return replace(base, name=name, **kept, **values)


def _applies(key: str, name: str) -> bool:
    owners = {
        "gradient": ("iwae",),
        "baseline": _TRACEGRAPH_NAMES,
        "site_baselines": _TRACEGRAPH_NAMES,
        "alpha": ("renyi",),
    }
    return name in owners[key]


def make_estimator(config: EstimatorConfig | str | ELBO | None = None) -> ELBO:
    """Return an ELBO object for a config, an estimator name (with ``:`` arguments), or an ELBO (passed through)."""
    if isinstance(config, ELBO):
        return config
    if config is None:
        config = EstimatorConfig()
    elif isinstance(config, str):
        config = parse_estimator(config)
    return ESTIMATORS[config.name].build(config)


# ---------------------------------------------------------------------------------------------
# Compatibility checks
# ---------------------------------------------------------------------------------------------


def _kind(elbo: ELBO) -> Optional[str]:
    if isinstance(elbo, IWAE_ELBO):
        return "iwae"
    if isinstance(elbo, KeyedJit_ELBO):
        return elbo.kind
    if isinstance(elbo, TraceGraph_ELBO):
        return "tracegraph"
    if isinstance(elbo, TraceEnum_ELBO):
        return "enum"
    if isinstance(elbo, TraceMeanField_ELBO):
        return "meanfield"
    if isinstance(elbo, RenyiELBO):
        return "renyi"
    if isinstance(elbo, Trace_ELBO):
        return "pathwise"
    return None


def _base_distribution(fn: Any) -> Any:
    while hasattr(fn, "base_dist") and not isinstance(fn, TransformedDistribution):
        fn = fn.base_dist
    return fn


def _check_dreg(trace_fn: Callable[[], Any], latents: list[dict]) -> None:
    for site in latents:
        if isinstance(_base_distribution(site["fn"]), TransformedDistribution):
            raise ConfigError(
                f"iwae with gradient dreg cannot use guide site {site['name']!r}: it is a transformed distribution "
                "(a flow), whose log-density is not a function of the sample alone; use gradient: reparam"
            )
    trace = trace_fn()
    values = [
        (s["name"], s["value"])
        for s in trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    for j, (name_j, value_j) in enumerate(values):
        for name_i, value_i in values[:j]:
            if value_i.requires_grad and value_j.requires_grad:
                (grad,) = torch.autograd.grad(value_j.sum(), value_i, retain_graph=True, allow_unused=True)
                if grad is not None:
                    raise ConfigError(
                        f"iwae with gradient dreg needs guide sites that do not feed one another, but guide site "
                        f"{name_j!r} depends on {name_i!r}; use gradient: reparam"
                    )


def _check_one(elbo: ELBO, model: Callable, guide: Callable, x: torch.Tensor, y: Optional[torch.Tensor]) -> None:
    kind = _kind(elbo)
    if kind is None:
        return
    trace = dry_trace(guide, x, y)
    latents = [
        s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    allow = bool(getattr(elbo, "allow_score_function", False))
    label = type(elbo).__name__
    for site in latents:
        name, fn = site["name"], site["fn"]
        reparam = getattr(fn, "has_rsample", False)
        if kind == "enum" and not reparam and not getattr(fn, "has_enumerate_support", False):
            raise ConfigError(
                f"estimator enum cannot handle guide site {name!r}: it is neither reparameterizable nor enumerable "
                f"({type(_base_distribution(fn)).__name__}; a continuous non-reparameterized, or an Independent "
                "discrete, distribution). Use tracegraph, or a Categorical / a plate per dimension"
            )
        if kind == "renyi" and not reparam:
            raise ConfigError(
                f"estimator renyi cannot train the non-reparameterized guide site {name!r}: Pyro's RenyiELBO adds "
                "no correct score-function term for it (with alpha = 0 its guide gets no gradient at all), even with "
                "allow_score_function; use iwae with allow_score_function, tracegraph or enum"
            )
        if kind == "meanfield" and not reparam:
            raise ConfigError(
                f"estimator meanfield needs every guide site reparameterized (Pyro's TraceMeanField_ELBO), but guide "
                f"site {name!r} is not ({type(_base_distribution(fn)).__name__}); use tracegraph or enum"
            )
        if kind == "iwae" and getattr(elbo, "gradient", "reparam") == "dreg" and not reparam:
            raise ConfigError(
                f"iwae with gradient dreg needs reparameterized guide sites, but guide site {name!r} is not "
                f"({type(_base_distribution(fn)).__name__}); use gradient: reparam with allow_score_function, "
                "or tracegraph"
            )
        if kind in ("pathwise", "iwae") and not reparam and not allow:
            raise ConfigError(
                f"estimator {label} cannot train the discrete guide site {name!r}: its samples carry no pathwise "
                "gradient (and this estimator does not enumerate it). Use estimator.name: tracegraph (score function "
                "with baselines), enum (exact enumeration) or a relaxed_categorical latent, or set "
                "estimator.allow_score_function: true for plain, high-variance REINFORCE"
            )
        if kind == "iwae" and not any(f.name == "data" for f in site["cond_indep_stack"]):
            raise ConfigError(
                f"iwae needs every latent local to a data point, but guide site {name!r} is outside the 'data' plate"
            )
    if kind == "iwae" and getattr(elbo, "gradient", "reparam") == "dreg":
        _check_dreg(lambda: dry_trace(guide, x, y, grad=True), latents)
    if kind == "meanfield":
        _check_mean_field_order(model, trace, x, y, [s["name"] for s in latents])


def _check_mean_field_order(model: Callable, guide_trace, x, y, guide_order: list[str]) -> None:
    """TraceMeanField_ELBO's analytic KL terms are right only when the guide samples in the model's order.

    Otherwise KL(q(a|...) || p(a|b)) would be taken at a ``b`` that was itself drawn given ``a``.
    """
    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope(), torch.no_grad():
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    model_order = [n for n, s in model_trace.nodes.items() if n in guide_order and s["type"] == "sample"]
    for guide_name, model_name in zip(guide_order, model_order):
        if guide_name != model_name:
            raise ConfigError(
                f"estimator meanfield needs the guide to sample its sites in the model's order, but guide site "
                f"{guide_name!r} comes before {model_name!r} in the guide and after it in the model (the analytic "
                "KL would be biased); use trace, or order the guide like the model"
            )


def check_estimator(elbo: ELBO, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Refuse, before training, an estimator that cannot train the guide's sample sites; prepare its state.

    Traces the guide once on a couple of data points. Refused, with a
    :class:`~ppl_vae.errors.ConfigError` naming the site:

    - ``trace``, ``meanfield``, ``iwae``, ``renyi`` (and any Trace_ELBO or RenyiELBO) with a
      non-reparameterized guide site, unless ``allow_score_function`` is set;
    - ``enum`` with a site that is neither reparameterizable nor enumerable;
    - ``iwae`` with a latent outside the ``data`` plate; with ``gradient: dreg``, a
      non-reparameterized site, a transformed (flow) site, or sites that feed one another.

    Then estimators with a ``prepare(model, guide, x, y)`` method build their learned
    state (``tracegraph`` baselines), before ``fit`` makes its optimizer. Wrappers
    that keep the wrapped estimator as ``.base`` are checked through it.
    """
    chain = [elbo]
    while isinstance(getattr(chain[-1], "base", None), ELBO):
        chain.append(chain[-1].base)
    if any(getattr(e, "check_without_labels", False) for e in chain):
        y = None  # semi-supervised: the label is a latent site only where it is hidden, the case to check
    for e in chain:
        _check_one(e, model, guide, x, y)
    for e in chain:
        prepare = getattr(e, "prepare", None)
        if callable(prepare):
            prepare(model, guide, x, y)
