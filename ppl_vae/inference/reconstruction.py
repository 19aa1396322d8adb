r"""Reconstruction error: how a trained autoencoder with a deterministic encoder is evaluated.

A guide whose latent sites are point masses, ``q(z|x) = δ(z - f(x))`` (the ``delta`` head: the classic,
denoising, sparse and contractive autoencoders), has no density to weigh samples with: the importance-sampled
log p(x) is not an estimate of anything for it (every weight is ``p(x, f(x))``, a single point of the joint).
Such a guide is evaluated by how well it reconstructs, with the mean of ``p(x | f(x))`` as the reconstruction
:math:`\hat x`:

.. math::

    \mathrm{BCE}(x) = -\sum_d x_d \log \hat x_d + (1 - x_d) \log(1 - \hat x_d) \quad \text{(nats per image, binary data)},
    \qquad
    \mathrm{MSE}(x) = \frac1D \sum_d (x_d - \hat x_d)^2 \quad \text{(per element)}.

The encoder sees clean input here: the guide runs in eval mode, so a denoising guide's corruption is off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine

from ..compat import site_is_subsample
from ..contract import data_site_name
from ..schema import documented

__all__ = ["POINT_MASS_REASON", "ReconstructionResult", "point_mass_sites", "reconstruction_error", "reconstruction_terms"]

#: the one line that says why a point-mass guide gets no log p(x)
POINT_MASS_REASON = (
    "the guide is a point mass (a deterministic encoder, e.g. head: delta), so an importance-sampled log p(x) "
    "means nothing for it; reporting the reconstruction error instead"
)


@documented
@dataclass(frozen=True)
class ReconstructionResult:
    """Reconstruction error per data point, with standard errors over the data points."""

    #: binary cross-entropy of the data under the reconstruction, nats per image (None unless the data are binary)
    bce: float | None
    #: standard error of that mean over data points
    bce_stderr: float | None
    #: mean squared error per element
    mse: float
    #: standard error of that mean over data points
    mse_stderr: float
    #: data points evaluated
    num_points: int

    def as_dict(self) -> dict:
        return asdict(self)


def _base(fn):
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def point_mass_sites(guide, x: torch.Tensor, y: torch.Tensor | None = None) -> list[str]:
    """The latent sites of ``guide`` that are point masses (``Delta``), read from one trace on ``x``.

    Call it with the guide in eval mode (:class:`~ppl_vae.inference.evaluate.eval_mode`).
    """
    trace = poutine.trace(guide).get_trace(x, y)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and isinstance(_base(site["fn"]), dist.Delta)
    ]


def reconstruction_terms(model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per data point of the batch ``x``, at the guide's code ``ẑ`` (one draw of it; the code itself for a point
    mass): ``-log p(x | ẑ)`` summed over the model's observed sites, and the reconstruction (the data site's mean,
    or its value where the distribution has no mean), ``(N,)`` and ``x``'s shape.

    The one reconstruction term of the library: the autoencoders' reconstruction error (below), the VQ-VAE's
    (:mod:`~ppl_vae.inference.codebook`) and the adversarial autoencoder's (:mod:`~ppl_vae.inference.adversarial`)
    all come from it. Call it with the modules in eval mode and without gradients.
    """
    guide_trace = poutine.trace(guide).get_trace(x, y)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    n = x.shape[0]
    nll = torch.zeros(n, dtype=torch.float64, device=x.device)
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site):
            log_p = site["fn"].log_prob(site["value"]).to(torch.float64)
            nll -= log_p.reshape(n, -1).sum(-1) if log_p.dim() else log_p.expand(n) / n
    site = trace.nodes[data_site_name(model, trace)]
    try:
        recon = site["fn"].mean
    except NotImplementedError:
        recon = site["value"].to(x.dtype)
    return nll, recon.reshape(x.shape)


def reconstruction_error(
    model, guide, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 100
) -> ReconstructionResult:
    """BCE (binary data only) and MSE of the reconstructions of ``x``; call it with the modules in eval mode."""
    binary = bool(((x == 0) | (x == 1)).all())
    bce, mse = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = y[start : start + batch_size] if y is not None else None
        recon = reconstruction_terms(model, guide, xb, yb)[1].to(torch.float64)
        target = xb.to(torch.float64)
        # (N, *x_shape) -> (N,)
        mse.append((recon - target).pow(2).reshape(xb.shape[0], -1).mean(-1))
        if binary:
            cross = F.binary_cross_entropy(recon.clamp(0, 1), target, reduction="none")
            bce.append(cross.reshape(xb.shape[0], -1).sum(-1))
    n = x.shape[0]

    def mean_se(parts: list[torch.Tensor]) -> tuple[float, float]:
        v = torch.cat(parts)
        return float(v.mean()), float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    bce_mean, bce_se = mean_se(bce) if binary else (None, None)
    mse_mean, mse_se = mean_se(mse)
    return ReconstructionResult(bce_mean, bce_se, mse_mean, mse_se, n)
