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
import warnings
import weakref
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, NamedTuple, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions import TransformedDistribution
from pyro.distributions.util import is_identically_zero
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.infer.util import MultiFrameTensor
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan
from torch import nn

from ..errors import ConfigError
from ..nets import ACTIVATIONS, MLP, check_choice
from .iwae import IWAE_ELBO, IWAE_GRADIENTS

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


def _dry_trace(guide: Callable, x: torch.Tensor, y: Optional[torch.Tensor], grad: bool = False):
    """Trace the guide once, in a private param store, leaving the random number generators as they were."""
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices), pyro.get_param_store().scope(), torch.set_grad_enabled(grad):
        return poutine.trace(guide).get_trace(x, y)


def _current_scale() -> float:
    """The product of the ``poutine.scale`` factors active now (compiled graphs hold it as a constant)."""
    scale = 1.0
    for frame in _PYRO_STACK:
        if isinstance(frame, ScaleMessenger):
            scale = scale * float(frame.scale)
    return scale


def _split_none(args: tuple) -> tuple[tuple[torch.Tensor, ...], tuple[bool, ...]]:
    """Tensors of ``args`` and where the Nones were (torch.jit.trace takes tensors only)."""
    pattern = tuple(a is None for a in args)
    for a in args:
        if a is not None and not torch.is_tensor(a):
            raise ValueError(f"JIT estimators take tensor (or None) arguments only, got {type(a).__name__}")
    return tuple(a for a in args if a is not None), pattern


def _with_none(tensors: tuple, pattern: tuple[bool, ...]) -> tuple:
    it = iter(tensors)
    return tuple(None if is_none else next(it) for is_none in pattern)


def _jit_key(model: Callable, guide: Callable, tensors: tuple, pattern: tuple) -> tuple:
    shapes = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
    return (id(model), id(guide), pattern, shapes, _current_scale())


class _quiet_jit(warnings.catch_warnings):
    """Silence torch's deprecation notice for ``torch.jit.trace``, on which Pyro's JIT ELBOs are built."""

    def __enter__(self):
        out = super().__enter__()
        warnings.filterwarnings("ignore", message=r"`torch.jit.trace` is deprecated", category=FutureWarning)
        return out


def _fill_none(fn: Callable, pattern: tuple[bool, ...]) -> Callable:
    def call(*tensors):
        return fn(*_with_none(tensors, pattern))

    return call


class _FixedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro 1.9.2's JitTraceMeanField_ELBO looks for its compiled function under the wrong attribute
    (``_loss_and_surrogate_loss``, while it stores ``_differentiable_loss``), so it recompiles at every call;
    this one compiles once."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = self.__dict__.get("_differentiable_loss")
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return compiled(*args, **kwargs)


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

    :param make: builds a fresh Pyro JIT ELBO.
    :param str kind: what :func:`check_estimator` checks it as (``pathwise``, ``enum``).
    """

    max_entries = 4

    def __init__(self, make: Callable[[], ELBO], kind: str) -> None:
        proto = make()
        super().__init__(num_particles=proto.num_particles, vectorize_particles=proto.vectorize_particles)
        self.max_plate_nesting = proto.max_plate_nesting
        self.kind = kind
        self._make = make
        self._entries: OrderedDict = OrderedDict()

    def _get_trace(self, model, guide, args, kwargs):
        """Not used: every call goes to a compiled instance."""
        raise NotImplementedError("KeyedJit_ELBO delegates to its compiled instances")

    def _entry(self, model: Callable, guide: Callable, args: tuple):
        tensors, pattern = _split_none(args)
        key = _jit_key(model, guide, tensors, pattern)
        entry = self._entries.get(key)
        if entry is None:
            entry = (self._make(), _fill_none(model, pattern), _fill_none(guide, pattern))
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
        with _quiet_jit():
            return elbo.differentiable_loss(m, g, *tensors, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        (elbo, m, g), tensors = self._entry(model, guide, args)
        with _quiet_jit():
            return elbo.loss_and_grads(m, g, *tensors, **kwargs)


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
# tracegraph: score function with per-site baselines
# ---------------------------------------------------------------------------------------------


class SiteBaseline(nn.Module):
    r"""The baseline of one non-reparameterized guide site, in unscaled nats.

    ``avg``: :math:`b = \bar c`, a bias-corrected exponential moving average of the
    site's mean learning signal (decay ``beta``), held in buffers.
    ``nn``: :math:`b(u) = \bar c + f(u)`, the running average plus a network of the
    input ``u``, trained to predict the residual by least squares
    (the input-dependent baseline of Mnih & Gregor 2014, centred as they do).

    :param float beta: decay of the running average.
    :param int in_dim: size of the network input; None for ``avg``.
    """

    def __init__(
        self, beta: float, in_dim: Optional[int] = None, hidden_dims: tuple[int, ...] = (), activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.beta = beta
        self.in_dim = in_dim
        self.register_buffer("average", torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros(()))
        self.net = MLP(in_dim, hidden_dims, 1, activation) if in_dim is not None else None

    def running_average(self) -> torch.Tensor:
        """The bias-corrected running average (0 before the first update)."""
        if float(self.num_updates) == 0:
            return self.average.detach()
        return (self.average / (1 - self.beta ** self.num_updates)).detach()

    def forward(self, features: Optional[torch.Tensor]) -> torch.Tensor:
        """The baseline, ``(...)`` for features ``(..., in_dim)``; a scalar for ``avg``."""
        if self.net is None:
            return self.running_average()
        return self.running_average() + self.net(features).squeeze(-1)

    @torch.no_grad()
    def update(self, signal: torch.Tensor) -> None:
        """Move the running average towards the mean of this step's learning signal."""
        self.average.mul_(self.beta).add_((1 - self.beta) * signal.mean().to(self.average.dtype))
        self.num_updates.add_(1)


class _SiteInfo(NamedTuple):
    name: str  # guide site name
    key: str  # its key in trainable_module
    mode: str  # avg | nn
    data_dim: Optional[int]  # the dim of the data plate in its batch shape
    upstream: tuple[str, ...]  # earlier guide latents that feed its network (x_and_upstream)


def _flat_value(site: dict) -> torch.Tensor:
    """A site's value as floats ``(*batch, size)``, event dims flattened (for a network input)."""
    value = detach_provenance(site["value"]).detach()
    event_dim = len(site["fn"].event_shape)
    if event_dim:
        value = value.reshape(value.shape[: value.dim() - event_dim] + (-1,))
    else:
        value = value.unsqueeze(-1)
    return value.to(torch.get_default_dtype())


class BaselineTraceGraph_ELBO(TraceGraph_ELBO):
    r"""Pyro's TraceGraph_ELBO, with baselines for any guide, chosen in the estimator config.

    The surrogate is that of :class:`~pyro.infer.TraceGraph_ELBO` (Schulman et al.
    2015): each non-reparameterized guide site :math:`z_j` contributes
    :math:`\nabla \log q(z_j) \, (c_j - b_j)` where :math:`c_j` is its downstream cost
    (the log-density terms that depend on :math:`z_j`, found by provenance tracking:
    Rao-Blackwellization) and :math:`b_j` a baseline that does not depend on :math:`z_j`.

    In Pyro the baseline is declared in the guide (``infer={"baseline": ...}``); here
    it comes from the estimator config, so any guide works unedited. Pyro's own
    decaying-average baseline keeps one average per position in the batch (it breaks
    on a smaller last batch), and its neural baseline must predict the cost *scaled*
    by ``1/B``; these baselines work in unscaled nats per data point
    (:class:`SiteBaseline`), are multiplied by the site's scale, and keep their
    state in :attr:`trainable_module` (an ``nn.ModuleDict``), which ``fit`` trains
    and checkpoints. Build it with :meth:`prepare` before making an optimizer
    (``fit`` does, through :func:`check_estimator`); otherwise it is built at the
    first call, too late for an optimizer that already exists.

    The baseline networks learn by least squares,
    :math:`s \sum_i (c_{ij} - b_j(u_i))^2` added to the surrogate loss (it does not
    change the reported loss), with the learning signal detached.

    :param str baseline: ``none`` | ``avg`` | ``nn``, for every non-reparameterized guide site.
    :param dict site_baselines: per-site overrides.
    :param float baseline_beta: decay of the running averages.
    :param tuple baseline_hidden_dims: hidden layers of the baseline networks.
    :param str baseline_activation: their activation.
    :param str baseline_input: ``x`` (the flattened data point) or ``x_and_upstream``
        (concatenated with the values of the guide latents sampled before the site, in the ``data`` plate).
    :param bool jit: compile the traces and surrogate with ``torch.jit.trace``, one compilation
        per argument shape and scale; the baselines run outside the compiled graph.

    References

    - Schulman, J., Heess, N., Weber, T. & Abbeel, P. (2015). Gradient Estimation Using
      Stochastic Computation Graphs. NeurIPS.
    - Mnih, A. & Gregor, K. (2014). Neural Variational Inference and Learning in Belief Networks. ICML.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        vectorize_particles: bool = True,
        baseline: str = "none",
        site_baselines: Optional[dict[str, str]] = None,
        baseline_beta: float = 0.9,
        baseline_hidden_dims: tuple[int, ...] = (64,),
        baseline_activation: str = "tanh",
        baseline_input: str = "x",
        jit: bool = False,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            ignore_jit_warnings=jit,
        )
        self.baseline = baseline
        self.site_baselines = dict(site_baselines or {})
        self.baseline_beta = baseline_beta
        self.baseline_hidden_dims = tuple(baseline_hidden_dims)
        self.baseline_activation = baseline_activation
        self.baseline_input = baseline_input
        self.jit = jit
        self.trainable_module = nn.ModuleDict()
        self._sites: Optional[tuple[_SiteInfo, ...]] = None  # set by prepare
        self._compiled: OrderedDict = OrderedDict()

    # -- preparation ----------------------------------------------------------------------------

    def prepare(self, model: Callable, guide: Callable, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """Find the guide's non-reparameterized sites and build their baselines (idempotent).

        :raises ConfigError: for a ``site_baselines`` entry that names no such site, or a
            neural baseline at a site outside the ``data`` plate.
        """
        trace = _dry_trace(guide, x, y)
        latents = [
            s
            for s in trace.nodes.values()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        ]
        discrete = [s for s in latents if not getattr(s["fn"], "has_rsample", False)]
        declared = [s["name"] for s in discrete if s["infer"].get("baseline")]
        if declared:
            raise ConfigError(
                f"guide sites {declared} declare Pyro baseline options (infer={{'baseline': ...}}), which tracegraph "
                "does not read: choose baselines with estimator.baseline / estimator.site_baselines instead"
            )
        names = [s["name"] for s in discrete]
        unknown = sorted(set(self.site_baselines) - set(names))
        if unknown:
            raise ConfigError(
                f"estimator.site_baselines names {unknown}, but the guide's non-reparameterized sites are {names}"
            )
        sites, specs = [], {}
        for index, site in enumerate(latents):
            if site in discrete:
                mode = self.site_baselines.get(site["name"], self.baseline)
                if mode == "none":
                    continue
                data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == "data"]
                data_dim = data_dims[0] if data_dims else None
                upstream: tuple[str, ...] = ()
                in_dim = None
                if mode == "nn":
                    if data_dim is None:
                        raise ConfigError(
                            f"a neural baseline needs guide site {site['name']!r} inside the 'data' plate (its "
                            "input is the data point); use baseline avg for a global site"
                        )
                    in_dim = math.prod(x.shape[1:])
                    if self.baseline_input == "x_and_upstream":
                        ups = [u for u in latents[:index] if any(f.name == "data" for f in u["cond_indep_stack"])]
                        upstream = tuple(u["name"] for u in ups)
                        in_dim += sum(_flat_value(u).shape[-1] for u in ups)
                key = site["name"].replace(".", "_")
                if key in specs:
                    raise ConfigError(f"guide sites {specs[key][0]!r} and {site['name']!r} clash as baseline keys")
                specs[key] = (site["name"], mode, in_dim)
                sites.append(_SiteInfo(site["name"], key, mode, data_dim, upstream))
        current = {k: m.in_dim for k, m in self.trainable_module.items()}
        wanted = {k: in_dim for k, (_, mode, in_dim) in specs.items()}
        if current != wanted:
            for k in list(self.trainable_module.keys()):
                del self.trainable_module[k]
            for k, (_, mode, in_dim) in specs.items():
                module = SiteBaseline(self.baseline_beta, in_dim, self.baseline_hidden_dims, self.baseline_activation)
                self.trainable_module[k] = module.to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        self._sites = tuple(sites)

    # -- one evaluation: ELBO, surrogate without baselines, and the baselined sites' pieces ------

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """``(elbo, surrogate_loss, *[score, signal, upstream, scale] per particle and baselined site)``, a flat tuple.

        ``signal`` is the site's downstream cost in unscaled nats (detached), ``scale`` the site's scale.
        """
        elbo, surrogate_elbo = 0.0, 0.0
        out: list[torch.Tensor] = []
        baselined = {info.name: info for info in self._sites}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            downstream: dict = defaultdict(MultiFrameTensor)
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"]
                    surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
                    for name in get_provenance(site["log_prob_sum"]):
                        downstream[name].add((site["cond_indep_stack"], site["log_prob"]))
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo - site["log_prob_sum"]
                    entropy_term = site["score_parts"].entropy_term
                    if not is_identically_zero(entropy_term):
                        surrogate_elbo = surrogate_elbo - entropy_term.sum()
                    for name in get_provenance(site["log_prob_sum"]):
                        downstream[name].add((site["cond_indep_stack"], -site["log_prob"]))
            for name, cost in downstream.items():
                gsite = guide_trace.nodes[name]
                cost = cost.sum_to(gsite["cond_indep_stack"])
                score = gsite["score_parts"].score_function
                surrogate_elbo = surrogate_elbo + (score * cost.detach()).sum()
            missing = [name for name in baselined if name not in downstream]
            if missing:
                raise ConfigError(
                    f"tracegraph baselines were prepared for guide sites {sorted(missing)}, which this run did not "
                    "sample; the guide's non-reparameterized sites must be the same at every step"
                )
            for info in self._sites:
                gsite = guide_trace.nodes[info.name]
                cost = downstream[info.name].sum_to(gsite["cond_indep_stack"])
                scale = _nonzero(gsite["scale"])
                signal = detach_provenance(cost).detach() / scale
                score = detach_provenance(gsite["score_parts"].score_function)
                ups = [_flat_value(guide_trace.nodes[u]) for u in info.upstream]
                upstream = torch.cat(_broadcast_last(ups), -1) if ups else signal.new_zeros(0)
                out.extend([score, signal, upstream, torch.as_tensor(scale, dtype=signal.dtype, device=signal.device)])
        elbo = detach_provenance(elbo) / self.num_particles
        surrogate_loss = -detach_provenance(surrogate_elbo) / self.num_particles
        return (_as_tensor(elbo, args), _as_tensor(surrogate_loss, args), *out)

    def _run_terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        if not self.jit:
            return self._terms(model, guide, args, kwargs)
        if kwargs:
            raise ValueError(f"jit_tracegraph passes only positional arguments, got {sorted(kwargs)}")
        tensors, pattern = _split_none(args)
        key = _jit_key(model, guide, tensors, pattern)
        compiled = self._compiled.get(key)
        if compiled is None:
            weakself = weakref.ref(self)

            def terms(*tensors):
                return weakself()._terms(model, guide, _with_none(tensors, pattern), {})

            compiled = pyro.ops.jit.trace(terms, ignore_warnings=True)
            self._compiled[key] = compiled
            while len(self._compiled) > KeyedJit_ELBO.max_entries:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        with _quiet_jit():
            return tuple(compiled(*tensors))

    def _baseline_loss(self, pieces: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        """The baselines' share of the surrogate loss, and their least-squares loss; updates the averages."""
        total = x.new_zeros(())
        if not self._sites:
            return total
        x_flat = x.reshape(x.shape[0], -1)  # (N, prod(x_shape))
        updates: dict[str, list] = defaultdict(list)
        for i in range(0, len(pieces), 4):
            info = self._sites[(i // 4) % len(self._sites)]
            score, signal, upstream, scale = pieces[i : i + 4]
            module = self.trainable_module[info.key]
            if info.mode == "nn":
                dtype = module.average.dtype
                features = x_flat.to(dtype)
                if upstream.numel():
                    # (..., N, prod(x_shape)) beside (..., N, upstream size)
                    features = features.expand(upstream.shape[:-1] + x_flat.shape[-1:])
                    features = torch.cat([features, upstream.to(dtype)], -1)
                b = module(features)  # (..., N)
                b = b.reshape(b.shape + (1,) * (-info.data_dim - 1))  # data dim to its plate position
            else:
                b = module(None)
            b = _expand_to(b, signal.shape, info.name)
            total = total + (score * (scale * b).detach()).sum() / self.num_particles
            if info.mode == "nn":
                total = total + scale * (signal - b).pow(2).sum() / self.num_particles
            updates[info.key].append(signal)
        for key, signals in updates.items():
            self.trainable_module[key].update(torch.cat([s.reshape(-1) for s in signals]))
        return total

    # -- the ELBO interface ---------------------------------------------------------------------

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative ELBO; back-propagates the baselined surrogate into model, guide and baselines."""
        if self._sites is None:
            self.prepare(model, guide, *args[:2])
        elbo, surrogate_loss, *pieces = self._run_terms(model, guide, args, kwargs)
        if pieces:
            surrogate_loss = surrogate_loss + self._baseline_loss(tuple(pieces), args[0])
        if surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = -float(elbo.detach())
        warn_if_nan(loss, "loss")
        return loss


def _nonzero(scale: Any) -> Any:
    """A scale to divide by: zero scales (masked-out batches) leave the signal as is."""
    if torch.is_tensor(scale):
        return torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale if scale != 0 else 1.0


def _broadcast_last(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Broadcast tensors over all but their last dim."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return [t.expand(batch + t.shape[-1:]) for t in tensors]


def _expand_to(b: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    while b.dim() > len(shape) and b.shape[0] == 1:
        b = b.squeeze(0)
    try:
        return b.expand(shape)
    except RuntimeError:
        raise ConfigError(
            f"the baseline of guide site {name!r} has shape {tuple(b.shape)}, which does not match its "
            f"learning signal of shape {tuple(shape)}"
        ) from None


def _as_tensor(value: Any, args: tuple) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    ref = next(a for a in args if torch.is_tensor(a))
    return ref.new_tensor(float(value), dtype=torch.get_default_dtype())


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
    trace = _dry_trace(guide, x, y)
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
        _check_dreg(lambda: _dry_trace(guide, x, y, grad=True), latents)


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
    for e in chain:
        _check_one(e, model, guide, x, y)
    for e in chain:
        prepare = getattr(e, "prepare", None)
        if callable(prepare):
            prepare(model, guide, x, y)
