r"""The importance-weighted bound of Burda et al. (2016), per data point, with plain or DReG gradients.

For a data point :math:`x_i` and K samples :math:`z_{ik} \sim q_\phi(z|x_i)`,

.. math::

    \log w_{ik} = \log p_\theta(x_i, z_{ik}) - \log q_\phi(z_{ik} | x_i),
    \qquad
    \mathcal{L}_K(x_i) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K w_{ik}\Big]
    \le \log p_\theta(x_i).

The log-sum-exp runs over the K samples *of each data point*; the batch loss is
:math:`-\sum_i s \, \mathcal{L}_K(x_i)` with :math:`s` the sites' common scale
(``1/B`` inside :func:`~ppl_vae.inference.fit.fit`, so the loss is in nats per
data point). The log weights are formed from *unscaled* log-densities
(``site["unscaled_log_prob"]``) and only the per-point bound is multiplied by
:math:`s`: a scale inside the log-sum-exp would change the bound.

This is not what Pyro's :class:`~pyro.infer.RenyiELBO` with ``alpha=0``
computes: it sums the log weights over the whole batch (every plate) before the
log-sum-exp over particles, which for a VAE with local latents is the bound of
one joint importance sample of the whole batch, much looser than the
per-point bound and not the IWAE objective (it is also formed from scaled log
weights). ``RenyiELBO`` stays in the registry as ``renyi`` for what it is.

Gradients (``gradient=``):

``"reparam"``
    the gradient of the bound through reparameterized samples,
    :math:`\sum_k \tilde w_k \nabla \log w_k` with
    :math:`\tilde w_k = w_k / \sum_j w_j`. A non-reparameterized guide site
    (opt-in only, ``allow_score_function``) adds the plain score-function term
    :math:`\mathcal{L}_K \sum_k \nabla_\phi \log q_\phi(z_k|x)`, with no baseline.

``"dreg"``
    the doubly reparameterized gradient (Tucker et al. 2019) for the guide,
    :math:`\sum_k \tilde w_k^2 \, \frac{\partial \log w_k}{\partial z_k}
    \frac{\partial z_k}{\partial \phi}`, in which :math:`\log q` is differentiated
    only through :math:`z_k`, never through the guide's distribution parameters;
    the model's parameters get the usual IWAE gradient. It needs every guide site
    reparameterized, and guide sites that do not feed one another's
    distributions (a hierarchical guide would need the derivative through the
    upstream sample); :func:`~ppl_vae.inference.estimators.check_estimator`
    refuses other guides with a :class:`~ppl_vae.errors.ConfigError` naming the
    site.

How DReG is assembled, without knowing which parameters belong to the guide: with
:math:`a_k = \log p_\theta(x, z_k)`, :math:`b_k = \log q_\phi(z_k|x)` and
:math:`c_k = \tilde w_k^2 - \tilde w_k` (held fixed), the surrogate is

.. math::

    \sum_k \tilde w_k (a_k - b_k)
    + \sum_k g_k \cdot z_k
    + \sum_k \tilde w_k \log q_\phi(\bar z_k | x),
    \qquad g_k = \frac{\partial}{\partial z_k} \sum_j c_j (a_j - b_j)

with :math:`g_k` and :math:`\bar z_k` (``z_k`` detached) held fixed. The first term
gives the model its IWAE gradient and the guide the plain one; the second
re-weights the guide's pathwise part from :math:`\tilde w_k` to
:math:`\tilde w_k^2`, and the third cancels the plain estimator's
score term :math:`-\sum_k \tilde w_k \partial b_k/\partial\phi`. ``g`` is the
partial derivative at fixed distribution parameters, computed by
``torch.autograd.grad`` with respect to the sampled values, so the guide's
distributions are never rebuilt.

References

- Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.
- Tucker, G., Lawson, D., Gu, S. & Maddison, C. J. (2019). Doubly Reparameterized Gradient
  Estimators for Monte Carlo Objectives. ICLR.
- Rainforth, T. et al. (2018). Tighter Variational Bounds are Not Necessarily Better. ICML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from pyro.infer import ELBO

from ..compat import scale_and_mask, warn_if_nan
from ..errors import ConfigError
from ..schema import documented
from .tracing import per_datum, sample_traces, weight_sites

__all__ = ["IWAE_ELBO", "IWAE_GRADIENTS", "IWAETerms"]

#: Gradient estimators of :class:`IWAE_ELBO`.
IWAE_GRADIENTS = ("reparam", "dreg")


@documented
@dataclass
class IWAETerms:
    """The per-data-point pieces of one evaluation of the bound."""

    #: (K, N) unscaled log p(x_i, z_ik) over the weighted model sites
    log_p: torch.Tensor
    #: (K, N) unscaled log q(z_ik | x_i)
    log_q: torch.Tensor
    #: (K, N) unscaled score functions of non-reparameterized guide sites, or None
    score: torch.Tensor | None
    #: (K, N) log q at the detached samples (DReG), or None
    log_q_fixed: torch.Tensor | None
    #: the guide's sampled values, which carry the pathwise gradient
    values: list
    #: the common scale of all sites (1/B inside fit)
    scale: float

    @property
    def log_weights(self) -> torch.Tensor:
        """(K, N) log importance weights."""
        return self.log_p - self.log_q


def _unscaled(site: dict) -> torch.Tensor:
    """A site's log-density with its mask but without its scale."""
    return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])


def _common_scale(sites: list[dict]) -> float:
    scale, first = None, None
    for site in sites:
        s = site["scale"]
        if torch.is_tensor(s):
            if s.numel() != 1:
                raise ValueError(
                    f"iwae needs a scalar scale at every site, but site {site['name']!r} has a scale of shape "
                    f"{tuple(s.shape)}"
                )
            value = float(s)
        else:
            value = float(s)
        if scale is None:
            scale, first = value, site["name"]
        elif not math.isclose(value, scale, rel_tol=1e-6):
            raise ValueError(
                f"iwae needs one scale shared by every site (it multiplies the per-point bound), but site "
                f"{first!r} has scale {scale:g} and site {site['name']!r} has {value:g}; KL weighting and "
                "per-site poutine.scale have no importance-weighted counterpart"
            )
    return 1.0 if scale is None else scale


class IWAE_ELBO(ELBO):
    r"""The importance-weighted bound with K samples, log-sum-exp per data point.

    See the module docstring for the objective and the two gradient estimators.

    :param int num_particles: K, the importance samples per data point. Defaults to 1 (the ELBO).
    :param int max_plate_nesting: plates in the model; the particle plate goes left of them. Defaults to 1.
    :param bool vectorize_particles: draw the K samples in one pass (else K passes, concatenated).
    :param str gradient: ``"reparam"`` or ``"dreg"``. Defaults to ``"reparam"``.
    :param bool allow_score_function: train non-reparameterized guide sites with the plain
        score function (``"reparam"`` only). Defaults to False, and such sites are refused.

    Every latent site must be local to a data point (inside the ``data`` plate).

    .. math::

        \mathrm{loss} = -\sum_{i=1}^{N} s \Big(\operatorname{logsumexp}_{k} \log w_{ik} - \log K\Big)

    References

    - Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.
    - Tucker, G., Lawson, D., Gu, S. & Maddison, C. J. (2019). Doubly Reparameterized Gradient
      Estimators for Monte Carlo Objectives. ICLR.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        vectorize_particles: bool = True,
        gradient: str = "reparam",
        allow_score_function: bool = False,
    ) -> None:
        if gradient not in IWAE_GRADIENTS:
            raise ValueError(f"iwae gradient must be one of {list(IWAE_GRADIENTS)}, got {gradient!r}")
        # The base class would add one to max_plate_nesting for its own particle plate; ours is separate.
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=False)
        self.vectorize_particles = vectorize_particles
        self.gradient = gradient
        self.allow_score_function = allow_score_function

    def _get_trace(self, model, guide, args, kwargs):
        """Not used: the bound is formed from :meth:`terms`, which runs its own particle plate."""
        raise NotImplementedError("IWAE_ELBO forms its bound from IWAE_ELBO.terms, not from single traces")

    # -- the per-data-point pieces --------------------------------------------------------------

    def terms(self, model: Callable, guide: Callable, *args, dreg: bool = False, **kwargs) -> IWAETerms:
        """Sample K particles per data point and return the unscaled per-point log-densities.

        :param bool dreg: also evaluate log q at the detached samples (the DReG surrogate needs it).
        """
        if kwargs:
            raise ValueError(f"iwae passes only positional (x, y) arguments to model and guide, got {sorted(kwargs)}")
        x = args[0]
        y = args[1] if len(args) > 1 else None
        nesting = int(self.max_plate_nesting)
        draws = [(self.num_particles, 1)] if self.vectorize_particles else [(1, self.num_particles)]
        pieces = []
        for size, repeats in draws:
            for _ in range(repeats):
                pieces.append(self._draw(model, guide, x, y, size, nesting, dreg))
        if len(pieces) == 1:
            return pieces[0]

        def cat(key: str) -> torch.Tensor | None:
            parts = [getattr(p, key) for p in pieces]
            return None if parts[0] is None else torch.cat(parts)  # (K, N) from K pieces of (1, N)

        return IWAETerms(
            log_p=cat("log_p"),
            log_q=cat("log_q"),
            score=cat("score"),
            log_q_fixed=cat("log_q_fixed"),
            values=[v for p in pieces for v in p.values],
            scale=pieces[0].scale,
        )

    def _draw(self, model, guide, x, y, num_samples: int, nesting: int, dreg: bool) -> IWAETerms:
        model_trace, guide_trace = sample_traces(model, guide, x, y, num_samples, nesting, self.vectorize_particles)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        model_sites, guide_sites = weight_sites(model_trace, guide_trace)
        shape = (num_samples, x.shape[0])
        log_p, log_q, score = x.new_zeros(shape), x.new_zeros(shape), None
        log_q_fixed = x.new_zeros(shape) if dreg else None
        for site in model_sites:
            log_p = log_p + per_datum(site, nesting, shape, _unscaled(site))
        for site in guide_sites:
            log_q = log_q + per_datum(site, nesting, shape, _unscaled(site))
            if not getattr(site["fn"], "has_rsample", False):
                if self.gradient == "dreg" or not self.allow_score_function:
                    raise ConfigError(
                        f"iwae ({self.gradient}) cannot train the non-reparameterized guide site {site['name']!r}"
                        + (
                            ": DReG needs reparameterized guide sites"
                            if self.gradient == "dreg"
                            else "; set estimator.allow_score_function: true for the (high-variance) score "
                            "function, or use tracegraph or enum"
                        )
                    )
                sf = scale_and_mask(site["score_parts"].score_function, 1.0, site["mask"])
                sf = per_datum(site, nesting, shape, sf)
                score = sf if score is None else score + sf
            if dreg:
                # log q at the detached sample: its gradient is the score term that DReG drops
                lp = scale_and_mask(site["fn"].log_prob(site["value"].detach()), 1.0, site["mask"])
                log_q_fixed = log_q_fixed + per_datum(site, nesting, shape, lp)
        scale = _common_scale(model_sites + guide_sites)
        values = [site["value"] for site in guide_sites]
        return IWAETerms(log_p, log_q, score, log_q_fixed, values, scale)

    # -- bound and surrogate -----------------------------------------------------------------------

    def _bound(self, terms: IWAETerms) -> torch.Tensor:
        """(N,) the per-point bound estimate, logsumexp over the K samples minus log K."""
        return terms.log_weights.logsumexp(0) - math.log(terms.log_weights.shape[0])

    def _surrogate(self, terms: IWAETerms, bound: torch.Tensor) -> torch.Tensor:
        """A scalar whose gradient is the chosen estimator of the gradient of ``sum_i bound_i``."""
        lw = terms.log_weights
        if self.gradient == "reparam":
            surrogate = bound.sum()
            if terms.score is not None:
                surrogate = surrogate + (bound.detach() * terms.score.sum(0)).sum()
            return surrogate
        w = torch.softmax(lw.detach(), dim=0)  # (K, N) normalized weights, per data point
        surrogate = (w * lw).sum()
        values = [v for v in terms.values if v.requires_grad]
        if values:
            correction = ((w * w - w) * lw).sum()
            grads = torch.autograd.grad(correction, values, retain_graph=True, allow_unused=True)
            for value, grad in zip(values, grads):
                if grad is not None:
                    surrogate = surrogate + (grad.detach() * value).sum()
        # The plain estimator's score term, -sum_k w_k d log q / d phi at fixed z, cancelled.
        return surrogate + (w * terms.log_q_fixed).sum()

    # -- the ELBO interface -------------------------------------------------------------------------

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        terms = self.terms(model, guide, *args, dreg=self.gradient == "dreg", **kwargs)
        bound = self._bound(terms)
        scale = terms.scale
        loss = -scale * bound.detach().sum()
        surrogate_loss = -scale * self._surrogate(terms, bound)
        return loss, surrogate_loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """The negative bound, as a tensor whose gradient is the chosen estimator."""
        loss, surrogate_loss = self._loss_and_surrogate(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative bound (nats per data point inside ``fit``); no gradients."""
        with torch.no_grad():
            terms = self.terms(model, guide, *args, **kwargs)
            loss = float(-terms.scale * self._bound(terms).sum())
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative bound; back-propagates the chosen gradient estimator into every parameter."""
        loss, surrogate_loss = self._loss_and_surrogate(model, guide, args, kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value
