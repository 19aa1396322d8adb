r"""The registry of ELBO estimators, chosen by name (``estimator.name`` in configs).

Every entry owns its behaviour: its options dataclass (the other keys of the ``estimator:`` section),
how it is built, the arguments it takes after colons, and the rules that refuse a guide it cannot
train (:mod:`ppl_vae.inference.checks` applies them). ``fit`` calls the built ELBO's
``loss_and_grads`` inside ``poutine.scale(1/B)``.

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
``renyi``          :class:`~pyro.infer.RenyiELBO` with its ``alpha`` (see below)
``jit_*``          the same, compiled with ``torch.jit.trace`` (``trace``, ``meanfield``,
                   ``tracegraph``, ``enum``); one compilation per argument shape and scale
================== =====================================================================

What ``renyi`` computes. With every site in the data plate, Pyro 1.9's ``RenyiELBO`` does its
log-sum-exp over the K particles per data point, but on log weights that already carry the sites'
scale :math:`s` (``1/B`` inside ``fit``):

.. math::

    \mathrm{loss} = -\frac{1}{1 - \alpha} \sum_{i=1}^{B}
        \Big(\operatorname{logsumexp}_{k} \big((1 - \alpha)\, s \log w_{ik}\big) - \log K\Big),

so inside ``fit`` it is not the Rényi bound of each point (for :math:`\alpha = 0`, use ``iwae``).
``tests/test_estimators.py`` checks this formula against ``RenyiELBO`` itself.

Estimator names carry arguments after colons: ``trace:10`` (10 particles), ``tracegraph:avg``,
``tracegraph:nn:4``, ``iwae:5``, ``iwae:50:dreg``, ``renyi:0.5``, ``renyi:0.5:8``; any option can
also be given as ``key=value`` (``tracegraph:nn:baseline_beta=0.95``). ``K`` defaults to
``num_particles`` (1), so plain ``iwae`` is the ELBO.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)

from ..contract import capability
from ..nets import ACTIVATIONS
from ..registry import (
    Arg,
    choice_arg,
    float_arg,
    int_arg,
    parse_arguments,
    split_name,
    syntax,
)
from ..schema import (
    BOOL,
    POSITIVE_INT,
    SIZES,
    check_fields,
    documented,
    number_in,
    one_of,
)
from .baselines import BaselineTraceGraph_ELBO, SiteBaseline
from .iwae import IWAE_ELBO, IWAE_GRADIENTS
from .jit import FixedJitTraceMeanField_ELBO, KeyedJit_ELBO
from .rules import SiteRule, dreg, enumerable, local, meanfield, not_enumerated, pathwise, renyi

__all__ = [
    "ESTIMATORS",
    "BASELINES",
    "EstimatorConfig",
    "EstimatorEntry",
    "FromRegistry",
    "ParticleOptions",
    "PathwiseOptions",
    "TraceGraphOptions",
    "IWAEOptions",
    "RenyiOptions",
    "AutoEnum_ELBO",
    "BaselineTraceGraph_ELBO",
    "JitAutoEnum_ELBO",
    "KeyedJit_ELBO",
    "SiteBaseline",
    "estimator_config",
    "make_estimator",
    "parse_estimator",
]

#: Baselines of a non-reparameterized guide site under ``tracegraph``.
BASELINES = ("none", "avg", "nn")
#: What a neural baseline sees.
BASELINE_INPUTS = ("x", "x_and_upstream")


# ---------------------------------------------------------------------------------------------
# Options: one dataclass per kind of estimator
# ---------------------------------------------------------------------------------------------


@documented
@dataclass(frozen=True)
class ParticleOptions:
    """Options of every estimator: its particles (``meanfield``, ``enum`` and their JIT twins take only these)."""

    #: Monte-Carlo samples per data point and step (K of iwae and renyi)
    num_particles: int = 1
    #: draw the particles in one vectorized pass
    vectorize_particles: bool = True
    #: plates in the model; the particle plate goes left of them
    max_plate_nesting: int = 1

    def __post_init__(self) -> None:
        check_fields(self, "estimator", num_particles=POSITIVE_INT, vectorize_particles=BOOL, max_plate_nesting=POSITIVE_INT)


@documented
@dataclass(frozen=True)
class PathwiseOptions(ParticleOptions):
    """Options of ``trace`` and ``jit_trace``."""

    #: train discrete guide sites by plain, high-variance REINFORCE instead of refusing them
    allow_score_function: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, "estimator", allow_score_function=BOOL)


@documented
@dataclass(frozen=True)
class TraceGraphOptions(ParticleOptions):
    """Options of ``tracegraph`` and ``jit_tracegraph``."""

    #: baseline of each non-reparameterized guide site: none | avg | nn
    baseline: str = "none"
    #: per-site overrides {site: none|avg|nn}
    site_baselines: dict[str, str] | None = None
    #: avg and nn: decay of the running average of the learning signal
    baseline_beta: float = 0.9
    #: nn: hidden layers of each site's baseline network
    baseline_hidden_dims: tuple[int, ...] = (64,)
    #: nn: activation, a key of ppl_vae.nets.ACTIVATIONS
    baseline_activation: str = "tanh"
    #: nn: x (the flattened point) | x_and_upstream (and earlier guide latents)
    baseline_input: str = "x"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(
            self, "estimator", baseline=one_of(BASELINES), baseline_beta=number_in(0, 1, high_open=True),
            baseline_hidden_dims=SIZES, baseline_activation=one_of(ACTIVATIONS), baseline_input=one_of(BASELINE_INPUTS),
        )
        if self.site_baselines is not None:
            if not isinstance(self.site_baselines, dict):
                raise ValueError(f"estimator.site_baselines must be a mapping site -> baseline, got {self.site_baselines!r}")
            for site, choice in self.site_baselines.items():
                one_of(BASELINES)(f"estimator.site_baselines[{site!r}]", choice)
            object.__setattr__(self, "site_baselines", dict(self.site_baselines))


@documented
@dataclass(frozen=True)
class IWAEOptions(PathwiseOptions):
    """Options of ``iwae``."""

    #: reparam | dreg (doubly reparameterized, for the guide)
    gradient: str = "reparam"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, "estimator", gradient=one_of(IWAE_GRADIENTS))


@documented
@dataclass(frozen=True)
class RenyiOptions(ParticleOptions):
    """Options of ``renyi``."""

    #: order of the alpha-divergence (not 1)
    alpha: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, "estimator", alpha=number_in())
        if self.alpha == 1:
            raise ValueError("estimator.alpha must be a finite number other than 1, got 1")


# ---------------------------------------------------------------------------------------------
# enum: every enumerable guide site enumerated
# ---------------------------------------------------------------------------------------------


class _EnumerateGuide:
    """Mixin: run the guide under ``config_enumerate(default="parallel")``, so no guide needs editing."""

    def _enumerated(self, guide: Callable) -> Callable:
        cache = self.__dict__.setdefault("_enumerated_guides", weakref.WeakKeyDictionary())
        try:
            wrapped = cache.get(guide)
        except TypeError:  # not weak-referenceable
            return config_enumerate(guide, default="parallel")
        if wrapped is None:
            wrapped = cache[guide] = config_enumerate(guide, default="parallel")
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


def _common(options: ParticleOptions) -> dict:
    return dict(
        num_particles=options.num_particles,
        vectorize_particles=options.vectorize_particles,
        max_plate_nesting=options.max_plate_nesting,
    )


def _tracegraph(options: TraceGraphOptions, jit: bool = False) -> ELBO:
    return BaselineTraceGraph_ELBO(
        baseline=options.baseline, site_baselines=options.site_baselines, baseline_beta=options.baseline_beta,
        baseline_hidden_dims=options.baseline_hidden_dims, baseline_activation=options.baseline_activation,
        baseline_input=options.baseline_input, jit=jit, **_common(options),
    )


def _jit(cls: type, **extra) -> Callable[[ParticleOptions], ELBO]:
    def build(options: ParticleOptions) -> ELBO:
        return KeyedJit_ELBO(lambda **over: cls(ignore_jit_warnings=True, **extra, **{**_common(options), **over}))

    return build


@documented
@dataclass(frozen=True)
class EstimatorEntry:
    """A registry entry: its options, how it is built, its arguments, and the guides it refuses."""

    options_cls: type  #: the dataclass of its options (the ``estimator:`` section's other keys)
    build: Callable[[Any], ELBO]  #: options -> a Pyro ELBO
    args: tuple[Arg, ...]  #: positional arguments after the colon
    site_rules: tuple[SiteRule, ...]  #: refusals, one latent guide site at a time
    summary: str  #: one line, for help texts
    enumerates: bool = False  #: sums out discrete sites enumerated in the model or the guide (TraceEnum_ELBO)
    dreg: bool = False  #: needs guide sites that do not feed one another (checked on a trace with gradients)
    model_order: bool = False  #: needs the guide to sample in the model's order (analytic KL terms)
    compiles: bool = False  #: compiled with torch.jit.trace, which looks parameters up in Pyro's global store

    def syntax(self, name: str) -> str:
        """``name[:A][:B]`` for help texts."""
        return syntax(name, self.args)


_K = int_arg("num_particles", "K")
_PARTICLES = (_K,)
_BASE_RULES = (not_enumerated,)

#: Registry of estimators: name -> :class:`EstimatorEntry`.
ESTIMATORS: dict[str, EstimatorEntry] = {
    "trace": EstimatorEntry(
        PathwiseOptions, lambda o: Trace_ELBO(**_common(o)), _PARTICLES, (*_BASE_RULES, pathwise),
        "Trace_ELBO, pathwise gradients",
    ),
    "meanfield": EstimatorEntry(
        ParticleOptions, lambda o: TraceMeanField_ELBO(**_common(o)), _PARTICLES, (*_BASE_RULES, meanfield),
        "TraceMeanField_ELBO, analytic KL", model_order=True,
    ),
    "tracegraph": EstimatorEntry(
        TraceGraphOptions, _tracegraph, (choice_arg("baseline", BASELINES), _K), _BASE_RULES,
        "score function with baselines",
    ),
    "enum": EstimatorEntry(
        ParticleOptions, lambda o: AutoEnum_ELBO(strict_enumeration_warning=False, **_common(o)), _PARTICLES,
        (enumerable,), "TraceEnum_ELBO, discrete sites enumerated", enumerates=True,
    ),
    "iwae": EstimatorEntry(
        IWAEOptions,
        lambda o: IWAE_ELBO(gradient=o.gradient, allow_score_function=o.allow_score_function, **_common(o)),
        (_K, choice_arg("gradient", IWAE_GRADIENTS)), (*_BASE_RULES, local, dreg, pathwise),
        "importance-weighted bound, per point", dreg=True,
    ),
    "renyi": EstimatorEntry(
        RenyiOptions, lambda o: RenyiELBO(alpha=o.alpha, **_common(o)), (float_arg("alpha", "ALPHA"), _K),
        (*_BASE_RULES, renyi), "RenyiELBO (scale inside the log-sum-exp)",
    ),
    "jit_trace": EstimatorEntry(
        PathwiseOptions, _jit(JitTrace_ELBO), _PARTICLES, (*_BASE_RULES, pathwise), "trace, compiled", compiles=True,
    ),
    "jit_meanfield": EstimatorEntry(
        ParticleOptions, _jit(FixedJitTraceMeanField_ELBO), _PARTICLES, (*_BASE_RULES, meanfield),
        "meanfield, compiled", model_order=True, compiles=True,
    ),
    "jit_tracegraph": EstimatorEntry(
        TraceGraphOptions, lambda o: _tracegraph(o, jit=True), (choice_arg("baseline", BASELINES), _K), _BASE_RULES,
        "tracegraph, compiled", compiles=True,
    ),
    "jit_enum": EstimatorEntry(
        ParticleOptions, _jit(JitAutoEnum_ELBO, strict_enumeration_warning=False), _PARTICLES, (enumerable,),
        "enum, compiled", enumerates=True, compiles=True,
    ),
}


@documented
@dataclass(frozen=True)
class EstimatorConfig:
    """Which gradient estimator trains the model (the ``estimator:`` section): a registry name and its options.

    In YAML the options are the section's other keys: ``estimator: {name: iwae, num_particles: 5}``.
    In Python, :func:`estimator_config` (``estimator_config("iwae", num_particles=5)``) or a string
    (``"iwae:5"``) is shorter.
    """

    #: a key of ESTIMATORS
    name: str = "trace"
    #: the entry's options dataclass (None: its defaults)
    options: Any = None

    def __post_init__(self) -> None:
        one_of(ESTIMATORS)("estimator.name", self.name)
        cls = ESTIMATORS[self.name].options_cls
        if self.options is None:
            object.__setattr__(self, "options", cls())
        elif type(self.options) is not cls:
            raise ValueError(f"estimator {self.name!r} takes {cls.__name__}, got {type(self.options).__name__}")


def estimator_config(name: str = "trace", **options: Any) -> EstimatorConfig:
    """An :class:`EstimatorConfig` from a registry name and its options as keywords.

    :raises ValueError: naming an option the estimator does not take, or a bad value.
    """
    one_of(ESTIMATORS)("estimator.name", name)
    cls = ESTIMATORS[name].options_cls
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"estimator {name!r} takes no option {unknown[0]!r}; its options: {valid}")
    return EstimatorConfig(name, cls(**options))


def parse_estimator(text: str, base: EstimatorConfig | None = None) -> EstimatorConfig:
    """Read ``name[:arg...]`` (e.g. ``tracegraph:avg``, ``iwae:5:dreg``, ``renyi:0.5``) into a config.

    Positional arguments follow each entry's syntax (:meth:`EstimatorEntry.syntax`); ``key=value``
    arguments set any other option. Options not given come from ``base`` where the new estimator
    has them too (``num_particles``, ``max_plate_nesting``, ...); the rest keep their defaults.

    :raises ValueError: for an unknown name, a bad argument, or an invalid value, naming it.
    """
    name, positional, keywords = split_name(text, "estimator", ESTIMATORS)
    entry = ESTIMATORS[name]
    values = parse_arguments(text, "estimator", name, entry.args, positional, keywords, entry.options_cls)
    fields = {f.name for f in dataclasses.fields(entry.options_cls)}
    carried = {k: v for k, v in dataclasses.asdict(base.options).items() if k in fields} if base is not None else {}
    return EstimatorConfig(name, entry.options_cls(**{**carried, **values}))


@runtime_checkable
class FromRegistry(Protocol):
    """An ELBO built by :func:`make_estimator`: it knows its registry config, whose rules check it."""

    estimator_config: EstimatorConfig


def make_estimator(config: EstimatorConfig | str | ELBO | None = None) -> ELBO:
    """Return an ELBO object for a config, an estimator name (with ``:`` arguments), or an ELBO (passed through)."""
    if isinstance(config, ELBO):
        return config
    if config is None:
        config = EstimatorConfig()
    elif isinstance(config, str):
        config = parse_estimator(config)
    elbo = ESTIMATORS[config.name].build(config.options)
    elbo.estimator_config = config
    return elbo


def registry_config(elbo: Any) -> EstimatorConfig | None:
    """The registry config an ELBO was built from, or None for an ELBO built by hand."""
    tagged = capability(elbo, FromRegistry)
    return tagged.estimator_config if tagged is not None else None
