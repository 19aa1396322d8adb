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
from dataclasses import asdict, dataclass, replace

import pyro
import torch
from tqdm.auto import tqdm

from ..contract import needs_labels
from ..errors import DataError
from ..programs import as_modules, seeded
from ..schema import POSITIVE_INT, check_fields, documented
from .distributed import current_world, gather_objects
from .reconstruction import ReconstructionResult, point_mass_sites, reconstruction_error
from .tracing import broadcasts_particles, per_datum, sample_traces, weight_sites
from .tracing import max_plate_nesting as max_plate_nesting_of

__all__ = [
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "log_weights",
    "importance_log_likelihood",
    "eval_mode",
    "conditioning_labels",
]


@documented
@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate (the ``eval:`` section)."""

    #: K importance samples per data point (Burda et al. 2015 use 5000)
    num_samples: int = 1000
    #: data points per evaluation batch
    batch_size: int = 100
    #: at most this many (sample, data point) pairs in memory at once
    max_rows: int = 50_000
    #: seeds the importance samples, so an evaluation gives the same numbers every time
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "eval", num_samples=POSITIVE_INT, batch_size=POSITIVE_INT, max_rows=POSITIVE_INT)


@documented
@dataclass(frozen=True)
class EvalResult:
    """Per-data-point averages in nats, with standard errors over the data points."""

    #: mean over points of the K-sample average of log w
    elbo: float
    #: standard error of that mean over data points
    elbo_stderr: float
    #: mean over points of the importance-sampled log p(x)
    log_likelihood: float
    #: standard error of that mean over data points
    log_likelihood_stderr: float
    #: K
    num_samples: int
    #: data points evaluated
    num_points: int
    #: a point-mass guide (head: delta): the reconstruction error, and log_likelihood is nan
    #: (see ppl_vae.inference.reconstruction)
    reconstruction: ReconstructionResult | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class eval_mode:
    """Context manager: modules in eval mode, no gradients, a private param store; restores on exit."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.modules = [m for m in modules if isinstance(m, torch.nn.Module)]

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


def _one_pass(model, guide, x, y, num_samples: int, nesting: int, vectorized: bool) -> torch.Tensor:
    model_trace, guide_trace = sample_traces(model, guide, x, y, num_samples, nesting, vectorized)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    shape = (num_samples, x.shape[0])
    total = x.new_zeros(shape)
    model_sites, guide_sites = weight_sites(model_trace, guide_trace)
    for site in model_sites:
        total = total + per_datum(site, nesting, shape)
    for site in guide_sites:
        total = total - per_datum(site, nesting, shape)
    return total


def log_weights(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_plate_nesting: int | None = None,
) -> torch.Tensor:
    """Log importance weights ``log p(x, z) - log q(z|x)`` for each sample and data point.

    The K samples are drawn in one vectorized pass, or one per pass when the model or guide does not
    broadcast over a leading particle dimension (see :mod:`ppl_vae.contract`).

    :param model: a Pyro model ``model(x, y)`` with its data in the plate ``data``.
    :param guide: a guide with the same signature.
    :param torch.Tensor x: a batch ``(N, *x_shape)``.
    :param int num_samples: K.
    :returns: a tensor of shape ``(K, N)``.
    """
    if max_plate_nesting is None:
        max_plate_nesting = max_plate_nesting_of(model, guide, x, y)
    if num_samples == 1:
        return _one_pass(model, guide, x, y, 1, max_plate_nesting, False)
    if broadcasts_particles(model, guide, x, y, max_plate_nesting):
        return _one_pass(model, guide, x, y, num_samples, max_plate_nesting, True)
    return torch.cat([_one_pass(model, guide, x, y, 1, max_plate_nesting, False) for _ in range(num_samples)])


def importance_log_likelihood(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    chunk_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled ``log p(x_i)`` and the K-sample mean of ``log w_i``, per data point.

    The K samples are drawn ``chunk_size`` at a time and the chunks' log-sum-exps merged.

    :returns: two tensors of shape ``(N,)``: the log-likelihood estimate and the ELBO estimate.
    """
    nesting = max_plate_nesting_of(model, guide, x, y)
    lse, mean = None, x.new_zeros(x.shape[0])
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        lw = log_weights(model, guide, x, y, k, nesting)  # (k, N)
        chunk = lw.logsumexp(0)
        lse = chunk if lse is None else torch.logaddexp(lse, chunk)
        mean = mean + lw.sum(0)
    return lse - math.log(num_samples), mean / num_samples


def conditioning_labels(model, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a model must be given to score x: ``y`` for a model that needs them (a conditional
    VAE, :class:`~ppl_vae.contract.NeedsLabels`), else None.

    Evaluation estimates log p(x); a semi-observed label (M2) stays latent there, and models without labels
    ignore them.
    """
    return y if needs_labels(model) else None


def evaluate(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    config: EvalConfig | None = None,
    *,
    progress: bool = False,
) -> EvalResult:
    """Test ELBO and importance-sampled log p(x), in nats per data point, with standard errors.

    Parameters are left untouched: modules run in eval mode without gradients. The samples of each batch
    are seeded from ``config.seed`` and the batch's number (the global random number generators are left
    as they were), so the same model, guide and data give the same numbers. In a process group
    (:mod:`ppl_vae.inference.distributed`), the batches are shared out among the ranks and every rank
    returns the result over all points, the same as one process computes.

    A guide with a point-mass latent site (a deterministic encoder, ``head: delta``) has no log p(x) to estimate:
    its ``log_likelihood`` is NaN, its ELBO is the bound at the code (K = 1: every sample is the same), and
    ``reconstruction`` holds the reconstruction error (:mod:`ppl_vae.inference.reconstruction`).

    :param model: a Pyro model, a function or a module (see :mod:`ppl_vae.contract`).
    :param torch.Tensor x: data ``(N, *x_shape)`` on the model's device.
    :param EvalConfig config: K, batch size, memory budget and seed.
    """
    config = config or EvalConfig()
    if x.shape[0] == 0:
        raise DataError("cannot evaluate on an empty data set")
    model, guide = as_modules(model, guide)
    with eval_mode(model, guide):
        point_mass = bool(point_mass_sites(guide, x[:2], None if y is None else y[:2]))
    if point_mass:  # every sample of a point mass is the same one, and log p(x) means nothing for it
        config = replace(config, num_samples=1)
    chunk = max(1, min(config.num_samples, config.max_rows // min(config.batch_size, x.shape[0])))
    world = current_world()
    # Batch b is seeded by (seed, b), so its numbers do not depend on which process evaluates it.
    batches = list(enumerate(range(0, x.shape[0], config.batch_size)))[world.rank :: world.size]
    parts = []
    with eval_mode(model, guide):
        desc, quiet = f"evaluate (K={config.num_samples})", not (progress and world.is_main)
        for b, start in tqdm(batches, desc=desc, disable=quiet, leave=False):
            xb = x[start : start + config.batch_size]
            yb = y[start : start + config.batch_size] if y is not None else None
            with seeded(config.seed + 1_000_003 * b):
                ll, elbo = importance_log_likelihood(model, guide, xb, yb, config.num_samples, chunk)
            parts.append((b, ll.double().cpu(), elbo.double().cpu()))
    parts = sorted((p for rank_parts in gather_objects(parts, world) for p in rank_parts), key=lambda p: p[0])
    ll, elbo = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    n = ll.numel()

    def stderr(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    recon = None
    if point_mass:
        with eval_mode(model, guide):
            recon = reconstruction_error(model, guide, x, y, config.batch_size)
    return EvalResult(
        elbo=float(elbo.mean()),
        elbo_stderr=stderr(elbo),
        log_likelihood=float("nan") if point_mass else float(ll.mean()),
        log_likelihood_stderr=float("nan") if point_mass else stderr(ll),
        num_samples=config.num_samples,
        num_points=n,
        reconstruction=recon,
    )
