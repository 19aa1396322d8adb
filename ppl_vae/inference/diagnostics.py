r"""Did the guide work? Pareto-smoothed importance-sampling diagnostics, and ArviZ posteriors.

For each data point :math:`x_i` and K draws :math:`z_{ik} \sim q(z|x_i)`, the
importance weights :math:`w_{ik} = p(x_i, z_{ik}) / q(z_{ik}|x_i)` tell how well
the guide covers the posterior (Yao et al. 2018):

- **k-hat**: the shape of a generalized Pareto distribution fitted to the
  largest weights (PSIS, Vehtari et al. 2024). Below 0.5 the importance
  estimate of :math:`\log p(x_i)` converges fast; above 0.7 it is unreliable
  in practice, because the weights' variance is effectively infinite.
- **ESS**: the effective sample size of the self-normalized weights
  :math:`\tilde w_{ik} = w_{ik} / \sum_l w_{il}`,

  .. math::

      \mathrm{ESS}_i = \Big(\sum_{k=1}^{K} \tilde w_{ik}^2\Big)^{-1} \in [1, K],

  equal to K when q is the exact posterior (all weights equal).

:func:`posterior_inference_data` puts draws from q(z|x) and importance-resampled
draws (which approach p(z|x) as K grows, when k-hat is small) side by side in an
:class:`arviz.InferenceData`, so ``az.summary`` and ``az.plot_posterior`` compare them.

References

- Yao, Y., Vehtari, A., Simpson, D. & Gelman, A. (2018). Yes, but Did It Work?: Evaluating
  Variational Inference. ICML.
- Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto Smoothed Importance
  Sampling. JMLR 25(72).
- Rubin, D. B. (1988). Using the SIR algorithm to simulate posterior distributions. Bayesian Statistics 3.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from pyro import poutine

from ..compat import site_is_subsample
from ..contract import DATA_PLATE, PARTICLE_PLATE, HasXShape, capability
from ..programs import as_modules
from ..schema import POSITIVE, check_value, documented
from .evaluate import eval_mode, log_weights

__all__ = [
    "PSISDiagnostics",
    "psis_diagnostics",
    "importance_diagnostics",
    "posterior_inference_data",
    "MIN_PSIS_SAMPLES",
]

#: Fewest samples per point with which PSIS can fit its tail (ArviZ needs at least 5 tail draws).
MIN_PSIS_SAMPLES = 21


def _arviz() -> Any:
    """Import ArviZ lazily: it is slow to import, and only diagnostics need it."""
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its upcoming refactor once a day on import; it is not about our use.
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz

    return arviz


@documented
@dataclass(frozen=True)
class PSISDiagnostics:
    """Per-point PSIS diagnostics of a guide, and their summaries (Yao et al. 2018)."""

    #: (N,) k-hat per point; -inf where the weights have no tail (all equal, e.g. q exact)
    pareto_k: np.ndarray
    #: (N,) 1 / sum of squared self-normalized raw weights, in [1, K]
    ess: np.ndarray
    #: (N,) the same for the Pareto-smoothed weights
    psis_ess: np.ndarray
    #: K, importance samples per point
    num_samples: int
    #: k-hat above which a point's importance estimate is flagged unreliable
    k_threshold: float
    #: share of points with k-hat > k_threshold
    share_k_above: float
    #: largest k-hat over the points
    max_k: float
    #: mean over points of the raw-weight ESS
    mean_ess: float
    #: median over points of the raw-weight ESS
    median_ess: float

    @property
    def num_points(self) -> int:
        return int(self.pareto_k.shape[0])

    def summary(self) -> dict:
        """The scalar summaries (for metrics files and tables)."""
        return {
            "num_points": self.num_points,
            "num_samples": self.num_samples,
            "k_threshold": self.k_threshold,
            "share_k_above": self.share_k_above,
            "max_k": self.max_k,
            "mean_ess": self.mean_ess,
            "median_ess": self.median_ess,
            "mean_ess_fraction": self.mean_ess / self.num_samples,
        }


def _ess(normalized_log_weights: np.ndarray) -> np.ndarray:
    """Kish's effective sample size of normalized log weights along the last axis."""
    return 1.0 / np.exp(2.0 * normalized_log_weights).sum(-1)


def _normalize(lw: np.ndarray) -> np.ndarray:
    top = lw.max(-1, keepdims=True)
    return lw - (top + np.log(np.exp(lw - top).sum(-1, keepdims=True)))


def _tail_is_flat(lw: np.ndarray) -> np.ndarray:
    """Whether each row has 4 or fewer draws strictly above PSIS's tail cutoff (ties: nothing to fit)."""
    k = lw.shape[-1]
    tail = int(math.ceil(min(k / 5.0, 3 * math.sqrt(k))))
    cutoff = np.sort(lw, axis=-1)[..., -tail - 1 : -tail]
    return (lw > cutoff).sum(-1) <= 4


def psis_diagnostics(log_weights: torch.Tensor | np.ndarray, k_threshold: float = 0.7) -> PSISDiagnostics:
    """k-hat and ESS of each point's importance weights.

    :param log_weights: ``(K, N)`` log importance weights, as returned by
        :func:`~ppl_vae.inference.evaluate.log_weights`.
    :param float k_threshold: k-hat above which a point is flagged. Defaults to 0.7 (Yao et al. 2018;
        Vehtari et al. 2024 suggest ``min(1 - 1/log10(K), 0.7)``).
    :raises ValueError: for a wrong shape, non-finite weights, or fewer than :data:`MIN_PSIS_SAMPLES` samples.
    """
    if torch.is_tensor(log_weights):
        log_weights = log_weights.detach().cpu().numpy()
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape (num_samples, num_points), got {lw.shape}")
    num_samples = lw.shape[0]
    if num_samples < MIN_PSIS_SAMPLES:
        raise ValueError(f"PSIS needs at least {MIN_PSIS_SAMPLES} samples per point, got {num_samples}")
    if not np.isfinite(lw).all():
        raise ValueError("log_weights must be finite")
    check_value("k_threshold", k_threshold, POSITIVE)
    az = _arviz()
    lw = np.ascontiguousarray(lw.T)  # (N, K): ArviZ wants the samples last
    smoothed, khat = az.psislw(lw, reff=1.0)  # importance draws are independent, so relative efficiency 1
    khat = np.where(_tail_is_flat(lw), -np.inf, np.asarray(khat, dtype=np.float64))
    ess = _ess(_normalize(lw))
    psis_ess = _ess(np.asarray(smoothed))
    return PSISDiagnostics(
        pareto_k=khat,
        ess=ess,
        psis_ess=psis_ess,
        num_samples=num_samples,
        k_threshold=float(k_threshold),
        share_k_above=float((khat > k_threshold).mean()),
        max_k=float(khat.max()),
        mean_ess=float(ess.mean()),
        median_ess=float(np.median(ess)),
    )


def importance_diagnostics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    k_threshold: float = 0.7,
    max_rows: int = 50_000,
) -> PSISDiagnostics:
    """Draw K importance samples per point of ``x`` and return :func:`psis_diagnostics` of their weights.

    Modules run in eval mode without gradients; parameters are left untouched.

    :param int max_rows: at most this many (sample, point) pairs are drawn in one pass.
    """
    model, guide = as_modules(model, guide)
    chunk = max(1, max_rows // max(1, x.shape[0]))
    with eval_mode(model, guide):
        parts = [
            log_weights(model, guide, x, y, min(chunk, num_samples - start)) for start in range(0, num_samples, chunk)
        ]
    return psis_diagnostics(torch.cat(parts), k_threshold)


def _latent_draws(trace, num_samples: int) -> dict[str, np.ndarray]:
    """Latent values of a guide trace drawn for one data point under the ``particles`` plate.

    :returns: site name -> array ``(K, *other plates, *event_shape)``; the data plate's dimension
        (one point) and unused broadcast dimensions are dropped.
    """
    draws = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        value = site["value"]
        event_shape = tuple(value.shape[value.dim() - len(site["fn"].event_shape) :])
        batch_shape = tuple(value.shape[: value.dim() - len(event_shape)])
        keep = {f.dim for f in site["cond_indep_stack"] if f.vectorized and f.name not in (DATA_PLATE, PARTICLE_PLATE)}
        # (K, ..., 1 (data), ..., *event) -> (K, *kept plates, *event)
        kept = [size for d, size in zip(range(1 - len(batch_shape), 0), batch_shape[1:]) if d in keep]
        value = value.expand((num_samples,) + tuple(value.shape[1:])) if batch_shape[:1] == (1,) else value
        draws[name] = value.reshape([num_samples, *kept, *event_shape]).detach().cpu().numpy()
    return draws


def posterior_inference_data(
    model: Callable,
    guide: Callable,
    x_single: torch.Tensor,
    num_samples: int = 1000,
    resample: bool = True,
    *,
    y: torch.Tensor | None = None,
    num_chains: int = 4,
) -> Any:
    r"""q(z|x) draws and importance-resampled draws for one data point, as an :class:`arviz.InferenceData`.

    Groups:

    - ``posterior``: K draws from the guide q(z|x), one variable per latent site of the guide
      (all its non-observed sample sites, plates excepted);
    - ``sample_stats``: ``log_weight``, the log importance weight of each of those draws;
    - ``importance_resampled`` (when ``resample``): K draws from the ``posterior`` draws, taken with
      replacement with probabilities equal to the self-normalized weights (sampling-importance
      resampling). They approach p(z|x) as K grows when the weights are well behaved (small k-hat).

    The K draws are independent; they are split into ``num_chains`` chains only so that ArviZ's
    multi-chain summaries (``r_hat``) are defined. Each group's attributes carry the point's
    ``pareto_k`` and ``ess`` (when K allows PSIS). Resampled draws repeat, so their ArviZ ESS
    overstates the information in them: trust ``ess``.

    Compare with ``az.summary(idata)`` and ``az.summary(idata, group="importance_resampled")``, or
    ``az.plot_posterior(idata, group=...)``.

    :param torch.Tensor x_single: one data point, shape ``(1, *x_shape)`` (or ``x_shape`` when the model
        declares ``x_shape``).
    :param int num_samples: K, a multiple of ``num_chains``.
    :param bool resample: add the ``importance_resampled`` group.
    :param y: the point's label, ``(1, ...)``, for models that take one.
    :param int num_chains: how many chains the K draws are split into. Defaults to 4.
    """
    x = x_single
    declared = capability(model, HasXShape)
    if declared is not None and tuple(x.shape) == tuple(declared.x_shape):
        x = x.unsqueeze(0)
    if x.dim() == 0 or x.shape[0] != 1:
        raise ValueError(f"x_single must be one data point with a leading batch dimension of 1, got {tuple(x.shape)}")
    if not isinstance(num_chains, int) or num_chains < 1 or num_samples % num_chains:
        raise ValueError(f"num_samples ({num_samples}) must be a positive multiple of num_chains ({num_chains})")
    az = _arviz()
    draws_per_chain = num_samples // num_chains
    model, guide = as_modules(model, guide)
    tracer = poutine.trace(guide)
    with eval_mode(model, guide):
        lw = log_weights(model, tracer, x, y, num_samples)[:, 0]  # (K,)
        draws = _latent_draws(tracer.trace, num_samples)  # the guide's draws behind those weights
    if not draws:
        raise ValueError("the guide has no latent sample sites")

    def chains(array: np.ndarray) -> np.ndarray:
        # (K, *shape) -> (chains, draws, *shape)
        return array.reshape((num_chains, draws_per_chain) + array.shape[1:])

    def dims(values: dict) -> dict:
        return {name: [f"{name}_dim_{i}" for i in range(v.ndim - 1)] for name, v in values.items()}

    attrs: dict = {"num_samples": num_samples, "inference": "amortized variational guide q(z|x)"}
    if num_samples >= MIN_PSIS_SAMPLES:
        diag = psis_diagnostics(lw[:, None])
        attrs.update(pareto_k=float(diag.pareto_k[0]), ess=float(diag.ess[0]))
    groups = {
        "posterior": az.dict_to_dataset({k: chains(v) for k, v in draws.items()}, dims=dims(draws), attrs=attrs),
        "sample_stats": az.dict_to_dataset({"log_weight": chains(lw.cpu().numpy())}, attrs=attrs),
    }
    if resample:
        probs = torch.softmax(lw.double(), dim=0)
        index = torch.multinomial(probs, num_samples, replacement=True).cpu().numpy()
        resampled = {k: v[index] for k, v in draws.items()}
        groups["importance_resampled"] = az.dict_to_dataset(
            {k: chains(v) for k, v in resampled.items()},
            dims=dims(resampled),
            attrs=dict(attrs, inference="sampling-importance resampling of the q(z|x) draws"),
        )
    return az.InferenceData(**groups)
