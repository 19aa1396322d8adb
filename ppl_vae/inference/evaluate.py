r"""Evaluation: the ELBO and the importance-sampled log-likelihood, per data point.

For each data point :math:`x_i` and samples :math:`z_{ik} \sim q(z|x_i)` the
log importance weights are

.. math::

    \log w_{ik} = \log p(x_i, z_{ik}) - \log q(z_{ik} | x_i),

and the two estimates are

.. math::

    \mathrm{ELBO}(x_i) \approx \frac{1}{K} \sum_k \log w_{ik},
    \qquad
    \log p(x_i) \approx \log \frac{1}{K} \sum_k w_{ik}
    = \operatorname{logsumexp}_k \log w_{ik} - \log K .

The log-sum-exp runs over the K samples of each data point separately, never
over the batch (the importance-weighted bound of Burda et al. 2015). The K
samples are drawn in chunks whose log-sum-exps are merged, so K = 5000 fits
in memory.

References

- Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from ..errors import DataError

__all__ = [
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "log_weights",
    "importance_log_likelihood",
    "eval_mode",
    "conditioning_labels",
]


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate (the ``eval:`` section)."""

    num_samples: int = 1000  # K importance samples per data point (Burda et al. 2015 use 5000)
    batch_size: int = 100  # data points per evaluation batch
    max_rows: int = 50_000  # at most this many (sample, data point) pairs in memory at once

    def __post_init__(self) -> None:
        for key in ("num_samples", "batch_size", "max_rows"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"eval.{key} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class EvalResult:
    """Per-data-point averages in nats, with standard errors over the data points."""

    elbo: float  # mean over points of the K-sample average of log w
    elbo_stderr: float  # standard error of that mean over data points
    log_likelihood: float  # mean over points of the importance-sampled log p(x)
    log_likelihood_stderr: float  # standard error of that mean over data points
    num_samples: int  # K
    num_points: int  # data points evaluated

    def as_dict(self) -> dict:
        return asdict(self)


class eval_mode:
    """Context manager: modules in eval mode, no gradients, a private param store; restores on exit."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> "eval_mode":
        self._was_training = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()
        self._no_grad = torch.no_grad()
        self._no_grad.__enter__()
        self._scope = pyro.get_param_store().scope()
        self._scope.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._scope.__exit__(*exc)
        self._no_grad.__exit__(*exc)
        for m, was in zip(self.modules, self._was_training):
            m.train(was)


def _max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor, y: Optional[torch.Tensor]) -> int:
    """The deepest plate nesting in model and guide, found by tracing one data point."""
    y1 = y[:1] if y is not None else None
    guide_trace = poutine.trace(guide).get_trace(x[:1], y1)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x[:1], y1)
    depth = 1
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        depth = max(depth, -frame.dim)
    return depth


def _per_datum(
    site: dict, nesting: int, shape: tuple[int, int], log_prob: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Reduce a site's batch-shaped log-prob (or ``log_prob``, of the same shape) to ``(num_samples, num_points)``."""
    data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == "data"]
    if not data_dims:
        raise ValueError(
            f"site {site['name']!r} is outside the 'data' plate; per-data-point bounds need every "
            "latent variable to be local to a data point"
        )
    data_dim = data_dims[0]
    lp = site["log_prob"] if log_prob is None else log_prob
    # left-pad to (particles, *plates)
    lp = lp.reshape((1,) * (nesting + 1 - lp.dim()) + tuple(lp.shape))
    other = [d for d in range(-nesting, 0) if d != data_dim]
    if other:
        lp = lp.sum(other, keepdim=True)
    # (K or 1, 1, ..., N or 1, 1, ...) -> (K, N)
    return lp.reshape(lp.shape[0], -1).expand(shape)


def sample_traces(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    num_samples: int,
    max_plate_nesting: int,
) -> tuple[Trace, Trace]:
    """Run the guide ``num_samples`` times in one vectorized pass, and the model against it.

    The particles get a plate left of the model's plates, so every site has batch
    shape ``(num_samples, *plates)``. Log-densities are not computed yet.

    :returns: ``(model_trace, guide_trace)``.
    """
    with pyro.plate("particles", num_samples, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def weight_sites(model_trace: Trace, guide_trace: Trace) -> tuple[list[dict], list[dict]]:
    """The model sites and the guide sites whose log-densities make up the log importance weight."""
    model_sites = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"] and name not in guide_trace.nodes:
            # A latent the guide leaves to the model is drawn from its prior: the proposal's
            # density equals the prior's, and the two cancel in the weight.
            continue
        model_sites.append(site)
    guide_sites = [
        site
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    return model_sites, guide_sites


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    num_samples: int = 1,
    max_plate_nesting: Optional[int] = None,
) -> torch.Tensor:
    """Log importance weights ``log p(x, z) - log q(z|x)`` for each sample and data point.

    :param model: a Pyro model ``model(x, y)`` with its data in a plate named ``data``.
    :param guide: a guide with the same signature.
    :param torch.Tensor x: a batch ``(N, *x_shape)``.
    :param int num_samples: K, drawn in one vectorized pass.
    :returns: a tensor of shape ``(K, N)``.
    """
    if max_plate_nesting is None:
        max_plate_nesting = _max_plate_nesting(model, guide, x, y)
    model_trace, guide_trace = sample_traces(model, guide, x, y, num_samples, max_plate_nesting)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    shape = (num_samples, x.shape[0])
    total = x.new_zeros(shape)
    model_sites, guide_sites = weight_sites(model_trace, guide_trace)
    for site in model_sites:
        total = total + _per_datum(site, max_plate_nesting, shape)
    for site in guide_sites:
        total = total - _per_datum(site, max_plate_nesting, shape)
    return total


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    num_samples: int = 1000,
    chunk_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled ``log p(x_i)`` and the K-sample mean of ``log w_i``, per data point.

    The K samples are drawn ``chunk_size`` at a time and the chunks' log-sum-exps merged.

    :returns: two tensors of shape ``(N,)``: the log-likelihood estimate and the ELBO estimate.
    """
    nesting = _max_plate_nesting(model, guide, x, y)
    lse, mean = None, x.new_zeros(x.shape[0])
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        lw = log_weights(model, guide, x, y, k, nesting)  # (k, N)
        chunk = lw.logsumexp(0)
        lse = chunk if lse is None else torch.logaddexp(lse, chunk)
        mean = mean + lw.sum(0)
    return lse - math.log(num_samples), mean / num_samples


def conditioning_labels(model, y):
    """The labels a model must be given to score x: ``y`` for a model conditioned on an input y, else None.

    Evaluation estimates log p(x); a semi-observed label (M2) stays latent there, and models without labels
    ignore them.
    """
    return y if getattr(getattr(model, "spec", None), "inputs", ()) else None


def evaluate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    config: EvalConfig | None = None,
    *,
    progress: bool = False,
) -> EvalResult:
    """Test ELBO and importance-sampled log p(x), in nats per data point, with standard errors.

    Parameters are left untouched: modules run in eval mode without gradients.

    :param torch.Tensor x: data ``(N, *x_shape)`` on the model's device.
    :param EvalConfig config: K, batch size and memory budget.
    """
    config = config or EvalConfig()
    if x.shape[0] == 0:
        raise DataError("cannot evaluate on an empty data set")
    chunk = max(1, min(config.num_samples, config.max_rows // min(config.batch_size, x.shape[0])))
    ll_parts, elbo_parts = [], []
    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    with eval_mode(*modules):
        starts = range(0, x.shape[0], config.batch_size)
        for start in tqdm(starts, desc=f"evaluate (K={config.num_samples})", disable=not progress, leave=False):
            xb = x[start : start + config.batch_size]
            yb = y[start : start + config.batch_size] if y is not None else None
            ll, elbo = importance_log_likelihood(model, guide, xb, yb, config.num_samples, chunk)
            ll_parts.append(ll)
            elbo_parts.append(elbo)
    ll, elbo = torch.cat(ll_parts).double(), torch.cat(elbo_parts).double()
    n = ll.numel()

    def stderr(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    return EvalResult(
        elbo=float(elbo.mean()),
        elbo_stderr=stderr(elbo),
        log_likelihood=float(ll.mean()),
        log_likelihood_stderr=stderr(ll),
        num_samples=config.num_samples,
        num_points=n,
    )
