r"""Weighted-KL objectives for any model and guide: β-VAE, KL annealing and free bits.

Models never hold KL terms. These objectives re-weight the KL part of the bound
from the outside, per latent sample site, for any pair of model and guide:

.. math::

    \mathcal{L}_t = \frac{1}{B} \sum_{i=1}^{B}
        \mathbb{E}_{q(z|x_i)}\left[\log p(x_i \mid z)\right]
        - \sum_{j \in S} w_t \, \max\!\Big(\lambda, \frac{1}{B} \sum_{i=1}^{B}
            \mathrm{KL}\big(q(z_j \mid \cdot) \,\|\, p(z_j \mid \cdot)\big)_i\Big)
        - \sum_{j \notin S} \frac{1}{B} \sum_{i=1}^{B} \mathrm{KL}_j(x_i)

where ``S`` are the chosen latent sites (all of them by default), ``w_t`` the
KL weight at step ``t`` (β times the schedule) and ``λ`` the free-bits floor
(``λ = 0``: no floor). ``w = 1, λ = 0`` is the ELBO.

Two implementations, chosen by :func:`kl_weighted`:

- **Without free bits** (``λ = 0``) the weight is applied with Pyro's own
  mechanism: the log-densities of a chosen site in *both* the guide and the
  model are multiplied by ``w_t`` (a scale messenger, as ``poutine.scale``),
  and the base estimator is run unchanged. With ``Trace_ELBO`` this scales the
  single-sample estimate ``log q(z_j) - log p(z_j)``; with
  ``TraceMeanField_ELBO`` it scales the analytic KL. Any base estimator works.
- **With free bits** the floor needs each site's KL averaged over the batch, so
  the loss is assembled from the model and guide traces of the base
  ``Trace_ELBO`` / ``TraceMeanField_ELBO``: the analytic KL
  (``torch.distributions.kl_divergence``) when the base is
  ``TraceMeanField_ELBO`` and the pair has one, else the Monte-Carlo
  ``log q - log p``.

Both need pathwise gradients at a weighted site: a weighted latent without
``rsample`` (a discrete site trained by REINFORCE or enumeration) would have its
score-function term scaled too, which is not the gradient of the weighted
objective, so it is refused with ``ValueError``; leave it out of ``sites``.
Free bits need pathwise gradients at *every* latent site, since the loss is
assembled without score-function terms.

Units: ``fit`` calls ``loss_and_grads`` inside ``poutine.scale(1/B)``. Each site's
KL is turned back into a per-data-point mean (dividing out the site's scale and
the size of the ``data`` plate) before the floor is applied, and multiplied back
after, so the loss stays in nats per data point, and a subsampled plate keeps
its ``N/B`` scaling. The reported loss is the negative *weighted* objective.

The schedule counts ``loss_and_grads`` calls in a buffer of
``objective.trainable_module``, which ``fit`` checkpoints and restores, so a
resumed run continues the schedule where it stopped.

References

- Higgins, I. et al. (2017). β-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework. ICLR.
- Bowman, S. R. et al. (2016). Generating Sentences from a Continuous Space. CoNLL (KL annealing).
- Fu, H. et al. (2019). Cyclical Annealing Schedule: A Simple Approach to Mitigating KL Vanishing. NAACL.
- Kingma, D. P. et al. (2016). Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS
  (free bits, appendix C.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import kl_divergence

from ..compat import elbo_trace, elbo_traces, site_is_subsample
from ..contract import DATA_PLATE
from ..schema import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    check_fields,
    documented,
    number_in,
    one_of,
)
from .estimators import EstimatorConfig, make_estimator

__all__ = ["KL_SCHEDULES", "KLWeighting", "KLWeighted_ELBO", "WeightingState", "kl_weighted"]

#: The KL weight schedules.
KL_SCHEDULES = ("constant", "linear", "cyclical")


@documented
@dataclass(frozen=True)
class KLWeighting:
    """How the KL terms are weighted (the ``kl_weighting:`` section).

    The weight at step ``t`` (``t`` = training steps done before this one) is

    - ``constant``: ``beta``;
    - ``linear``: ``beta * min(1, t / warmup_steps)`` (Bowman et al. 2016);
    - ``cyclical``: ``beta * min(1, ((t mod cycle_steps) / cycle_steps) / cycle_ramp)`` (Fu et al. 2019).
    """

    #: KL weight at full strength (beta-VAE); 1 with no schedule and no free bits is the ELBO
    beta: float = 1.0
    #: latent sites whose KL is weighted; () = every latent sample site of the guide
    sites: tuple[str, ...] = ()
    #: constant | linear (warm-up from 0 to beta) | cyclical (repeated warm-ups)
    schedule: str = "constant"
    #: linear: steps for the weight to rise from 0 to beta (>= 1 for linear)
    warmup_steps: int = 0
    #: cyclical: steps per cycle (>= 1 for cyclical)
    cycle_steps: int = 0
    #: cyclical: fraction of each cycle spent rising from 0 to beta, in (0, 1]
    cycle_ramp: float = 0.5
    #: lambda: floor, in nats, on each chosen site's batch-mean KL; 0 = off
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        check_fields(
            self, "kl_weighting", beta=NON_NEGATIVE, free_bits=NON_NEGATIVE, schedule=one_of(KL_SCHEDULES),
            warmup_steps=NON_NEGATIVE_INT, cycle_steps=NON_NEGATIVE_INT, cycle_ramp=number_in(0, 1, low_open=True),
        )
        if isinstance(self.sites, str) or not isinstance(self.sites, (tuple, list)):
            raise ValueError(f"kl_weighting.sites must be a list of site names, got {self.sites!r}")
        if not all(isinstance(s, str) and s for s in self.sites) or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"kl_weighting.sites must be distinct non-empty site names, got {self.sites!r}")
        object.__setattr__(self, "sites", tuple(self.sites))
        if self.schedule == "linear" and self.warmup_steps < 1:
            raise ValueError(f"kl_weighting.warmup_steps must be >= 1 with schedule linear, got {self.warmup_steps!r}")
        if self.schedule == "cyclical" and self.cycle_steps < 1:
            raise ValueError(f"kl_weighting.cycle_steps must be >= 1 with schedule cyclical, got {self.cycle_steps!r}")

    def weight(self, step: int) -> float:
        """The KL weight ``w_t`` at training step ``step`` (counted from 0)."""
        if self.schedule == "linear":
            return self.beta * min(1.0, step / self.warmup_steps)
        if self.schedule == "cyclical":
            position = (step % self.cycle_steps) / self.cycle_steps
            return self.beta * min(1.0, position / self.cycle_ramp)
        return float(self.beta)

    @property
    def is_elbo(self) -> bool:
        """Whether this weighting leaves the ELBO unchanged (weight 1 at every step, no floor)."""
        return self.beta == 1 and self.schedule == "constant" and self.free_bits == 0


class WeightingState(nn.Module):
    """The objective's training state, checkpointed by ``fit`` as ``estimator.trainable_module``.

    :param base: the wrapped estimator's own ``trainable_module``, if it has one (kept as a submodule).
    """

    step: torch.Tensor

    def __init__(self, base: nn.Module | None = None) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.base = base


def _check_pathwise(site: dict, free_bits: bool = False) -> None:
    if getattr(site["fn"], "has_rsample", False):
        return
    if free_bits:
        raise ValueError(
            f"free bits need pathwise gradients at every latent site, but {site['name']!r} has no "
            "reparameterized sampler; use kl_weighting.free_bits: 0 with this guide"
        )
    raise ValueError(
        f"cannot weight the KL of latent site {site['name']!r}: it has no reparameterized sampler, and "
        "scaling its log-densities would also scale its score-function gradient. Name only "
        "reparameterized sites in kl_weighting.sites"
    )


class _WeightKL(Messenger):
    """Multiplies the scale of chosen latent sites by ``weight``.

    On the guide (``record=True``) it notes which latent sites it weighted; on the
    model it weights the sites of the same names. Every Pyro ELBO runs the guide
    before replaying the model against it, so the model sees the guide's choice.
    """

    def __init__(self, weight: float, sites: tuple[str, ...], record: bool, chosen: set, seen: set) -> None:
        super().__init__()
        self.weight = weight
        self.sites = sites
        self.record = record
        self.chosen = chosen
        self.seen = seen

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        name = msg["name"]
        if self.record:
            self.seen.add(name)
            if self.sites and name not in self.sites:
                return
            _check_pathwise(msg)
            self.chosen.add(name)
        elif name not in self.chosen:
            return
        msg["scale"] = self.weight * msg["scale"]


class KLWeighted_ELBO(ELBO):
    r"""A base ELBO with the KL of chosen latent sites weighted by a schedule, optionally with free bits.

    See the module docstring for the objective. Build it with :func:`kl_weighted`.

    :param ELBO base: the estimator that computes the bound. Any Pyro ELBO without free bits;
        ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (or a subclass) with free bits.
    :param KLWeighting weighting: beta, sites, schedule and free bits.
    """

    def __init__(self, base: ELBO, weighting: KLWeighting) -> None:
        if not isinstance(base, ELBO):
            raise ValueError(f"the base estimator must be a Pyro ELBO, got {type(base).__name__}")
        if weighting.free_bits > 0 and not isinstance(base, Trace_ELBO):
            raise ValueError(
                "kl_weighting.free_bits needs a Trace_ELBO or TraceMeanField_ELBO base estimator (it assembles "
                f"per-site KL terms from their traces), got {type(base).__name__}"
            )
        super().__init__(
            num_particles=base.num_particles,
            max_plate_nesting=base.max_plate_nesting,
            vectorize_particles=base.vectorize_particles,
        )
        self.max_plate_nesting = base.max_plate_nesting  # the base already counted any particle plate
        self.base = base
        self.weighting = weighting
        self.trainable_module = WeightingState(getattr(base, "trainable_module", None))

    @property
    def step(self) -> int:
        """Training steps (``loss_and_grads`` calls) taken so far."""
        return int(self.trainable_module.step)

    @property
    def kl_weight(self) -> float:
        """The KL weight that the next training step uses."""
        return self.weighting.weight(self.step)

    def _get_trace(self, model: Callable, guide: Callable, args, kwargs):
        """One (model trace, guide trace) pair of the base estimator, for the weighted pair."""
        model_w, guide_w, _ = self._weighted(model, guide)
        return elbo_trace(self.base, model_w, guide_w, args, kwargs)

    # -- the weighted pair, for the base estimator ------------------------------------------

    def _weighted(self, model: Callable, guide: Callable) -> tuple[Callable, Callable, set]:
        if self.weighting.is_elbo:
            return model, guide, set()
        chosen: set = set()
        seen: set = set()
        w = self.kl_weight
        guide_w = _WeightKL(w, self.weighting.sites, True, chosen, seen)(guide)
        model_w = _WeightKL(w, self.weighting.sites, False, chosen, seen)(model)
        return model_w, guide_w, seen

    def _check_sites(self, seen: set) -> None:
        missing = [s for s in self.weighting.sites if s not in seen]
        if seen and missing:
            raise ValueError(
                f"kl_weighting.sites names {missing}, but the guide's latent sites are {sorted(seen)}"
            )

    # -- free bits: the loss assembled from traces -------------------------------------------

    def _free_bits_loss(self, model: Callable, guide: Callable, args, kwargs) -> torch.Tensor:
        """Differentiable loss (negative weighted bound) with each chosen site's batch-mean KL floored at lambda."""
        weighting, base = self.weighting, self.base
        analytic = isinstance(base, TraceMeanField_ELBO)
        other = 0.0  # every term but the latent sites' KL: log p(x|z), model-only and auxiliary sites
        kl_sums: dict[str, torch.Tensor] = {}  # site -> sum over particles and points of the unscaled KL
        site_units: dict[str, tuple[object, int]] = {}  # site -> (scale, data points in the batch)
        seen: set = set()
        for model_trace, guide_trace in elbo_traces(base, model, guide, args, kwargs):
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                if site["is_observed"] or name not in guide_trace.nodes:
                    other = other + site["log_prob_sum"]
            for name, gsite in guide_trace.nodes.items():
                if gsite["type"] != "sample" or gsite["is_observed"] or site_is_subsample(gsite):
                    continue
                seen.add(name)
                if name not in model_trace.nodes:  # auxiliary guide site
                    other = other - gsite["log_prob_sum"]
                    continue
                _check_pathwise(gsite, free_bits=True)
                msite = model_trace.nodes[name]
                kl = None
                if analytic:
                    try:
                        kl = kl_divergence(gsite["fn"], msite["fn"])
                    except NotImplementedError:
                        kl = None
                if kl is None:
                    kl = gsite["unscaled_log_prob"] - msite["unscaled_log_prob"]
                if gsite["mask"] is not None:
                    kl = kl * gsite["mask"]
                scale = gsite["scale"]
                if torch.is_tensor(scale) and scale.numel() > 1:
                    raise ValueError(f"free bits needs a scalar scale at site {name!r}, got shape {tuple(scale.shape)}")
                points = [f.size for f in gsite["cond_indep_stack"] if f.name == DATA_PLATE]
                site_units[name] = (scale, points[0] if points else 1)
                kl_sums[name] = kl_sums.get(name, 0.0) + kl.sum()
        self._check_sites(seen)
        loss = -other / self.num_particles
        w = self.kl_weight
        for name, total in kl_sums.items():
            scale, points = site_units[name]
            mean_kl = total / (self.num_particles * points)  # per data point, averaged over the batch
            if not weighting.sites or name in weighting.sites:
                mean_kl = w * torch.clamp(mean_kl, min=weighting.free_bits)
            loss = loss + scale * points * mean_kl
        return loss

    # -- the ELBO interface --------------------------------------------------------------------

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """The negative weighted bound as a differentiable tensor (does not advance the schedule)."""
        if self.weighting.free_bits > 0:
            return self._free_bits_loss(model, guide, args, kwargs)
        model_w, guide_w, seen = self._weighted(model, guide)
        loss = self.base.differentiable_loss(model_w, guide_w, *args, **kwargs)
        self._check_sites(seen)
        return loss

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative weighted bound (does not advance the schedule)."""
        if self.weighting.free_bits > 0:
            with torch.no_grad():
                return float(self._free_bits_loss(model, guide, args, kwargs))
        model_w, guide_w, seen = self._weighted(model, guide)
        loss = self.base.loss(model_w, guide_w, *args, **kwargs)
        self._check_sites(seen)
        return float(loss)

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative weighted bound; back-propagates its gradient and advances the schedule by one step."""
        if self.weighting.free_bits > 0:
            loss = self._free_bits_loss(model, guide, args, kwargs)
            if loss.requires_grad:
                loss.backward(retain_graph=self.retain_graph)
            value = float(loss.detach())
        else:
            model_w, guide_w, seen = self._weighted(model, guide)
            value = float(self.base.loss_and_grads(model_w, guide_w, *args, **kwargs))
            self._check_sites(seen)
        self.trainable_module.step += 1
        return value


def kl_weighted(
    estimator: ELBO | EstimatorConfig | str | None, weighting: KLWeighting | None = None
) -> KLWeighted_ELBO:
    """Wrap an estimator so that the KL of chosen latent sites is weighted, annealed and/or floored.

    :param estimator: a Pyro ELBO, or anything :func:`~ppl_vae.inference.estimators.make_estimator` accepts.
    :param KLWeighting weighting: beta, sites, schedule, free bits. Defaults to ``KLWeighting()`` (the plain ELBO).
    :returns: a :class:`KLWeighted_ELBO`, usable as ``fit(..., estimator=objective)``.
    """
    return KLWeighted_ELBO(make_estimator(estimator), weighting or KLWeighting())
