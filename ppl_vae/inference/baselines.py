"""Baselines for the score-function (REINFORCE) estimator: :class:`BaselineTraceGraph_ELBO`.

A decaying average or a small neural network per non-reparameterized guide site, kept in
``trainable_module`` so ``fit`` trains and checkpoints it.

References

- Mnih, A. & Gregor, K. (2014). Neural Variational Inference and Learning in Belief Networks. ICML.
- Schulman, J., Heess, N., Weber, T. & Abbeel, P. (2015). Gradient Estimation Using Stochastic
  Computation Graphs. NeurIPS.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict, defaultdict
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro.infer import TraceGraph_ELBO
from torch import nn

from ..compat import (
    MultiFrameTensor,
    detach_provenance,
    elbo_traces,
    get_provenance,
    is_identically_zero,
    warn_if_nan,
)
from ..contract import DATA_PLATE
from ..errors import ConfigError
from ..nets import MLP
from .jit import KeyedJit_ELBO, jit_key, quiet_jit, split_none, with_none
from .tracing import dry_trace, latent_nodes

__all__ = ["SiteBaseline", "BaselineTraceGraph_ELBO"]


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
        self, beta: float, in_dim: int | None = None, hidden_dims: tuple[int, ...] = (), activation: str = "tanh"
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

    def forward(self, features: torch.Tensor | None) -> torch.Tensor:
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
    data_dim: int | None  # the dim of the data plate in its batch shape
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
        site_baselines: dict[str, str] | None = None,
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
        self._sites: tuple[_SiteInfo, ...] | None = None  # set by prepare
        self._compiled: OrderedDict = OrderedDict()

    # -- preparation ----------------------------------------------------------------------------

    def prepare(self, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Find the guide's non-reparameterized sites and build their baselines (idempotent).

        :raises ConfigError: for a ``site_baselines`` entry that names no such site, or a
            neural baseline at a site outside the ``data`` plate.
        """
        latents = latent_nodes(dry_trace(guide, x, y))
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
                data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
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
                        ups = [u for u in latents[:index] if any(f.name == DATA_PLATE for f in u["cond_indep_stack"])]
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
        for model_trace, guide_trace in elbo_traces(self, model, guide, args, kwargs):
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
            if missing and len(missing) < len(baselined):
                raise ConfigError(
                    f"tracegraph baselines were prepared for guide sites {sorted(missing)}, which this run did not "
                    "sample; the guide's non-reparameterized sites must be the same at every step"
                )
            if missing:
                # None was sampled: a semi-observed latent observed in this batch (M2's labelled points).
                continue
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
        tensors, pattern = split_none(args)
        key = jit_key(model, guide, tensors, pattern)
        compiled = self._compiled.get(key)
        if compiled is None:
            weakself = weakref.ref(self)

            def terms(*tensors):
                return weakself()._terms(model, guide, with_none(tensors, pattern), {})

            compiled = pyro.ops.jit.trace(terms, ignore_warnings=True)
            self._compiled[key] = compiled
            while len(self._compiled) > KeyedJit_ELBO.max_entries:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        with quiet_jit():
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
