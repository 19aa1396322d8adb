r"""Full-covariance Gaussian guide head: q(z | c) = MultivariateNormal(loc(c), L(c) L(c)^T).

The Cholesky factor is predicted from the context ``c`` by a linear map:

.. math::

    L(c) = \operatorname{diag}\big(\operatorname{softplus}(a(c)) + s_{\min}\big) + \operatorname{tril}_{-1}(b(c)),

with ``a`` the ``dim`` diagonal outputs and ``b`` the ``dim (dim - 1) / 2``
strictly-lower entries, laid out in the order of
``torch.tril_indices(dim, dim, offset=-1)``. The diagonal is positive by
construction, so ``L`` is always a valid Cholesky factor and ``log q`` is exact.

Registered in :data:`~ppl_vae.heads.HEADS` as ``"fullcov"``; it may be
the guide of any real-valued latent.

References

- Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR (appendix: full-covariance posteriors).
- Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models. ICML.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ..families import MIN_SCALE, inverse_softplus
from ..schema import POSITIVE, check_value
from .base import Head

__all__ = ["FullCovHead"]


class FullCovHead(Head):
    """Linear maps from the context to the mean and the Cholesky factor of a full-covariance Gaussian.

    :param int context_dim: size of the context vector.
    :param int dim: size of the latent; event shape ``(dim,)``.
    :param float min_scale: floor added to the softplus of the diagonal, so ``L`` stays invertible. Defaults to 1e-4.
    """

    def __init__(self, context_dim: int, dim: int, min_scale: float = MIN_SCALE) -> None:
        super().__init__(context_dim, dim)
        check_value("fullcov head: min_scale", min_scale, POSITIVE)
        self.min_scale = min_scale
        self.loc = nn.Linear(context_dim, dim)
        # outputs: dim raw diagonal entries, then the strictly-lower entries row by row
        self.tril = nn.Linear(context_dim, dim + dim * (dim - 1) // 2)
        # Start as a diagonal Gaussian: with default init, the dim (dim - 1) / 2 off-diagonal entries add up to
        # row norms far above the diagonal's for large latents (for dim = 50 the initial scales are ~3x those
        # of the diagonal head), which slows early training badly. The correlations are then learned.
        with torch.no_grad():
            self.tril.weight[dim:].zero_()
            self.tril.bias[dim:].zero_()
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)

    def scale_tril(self, context: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor ``(..., dim, dim)`` for a context ``(..., context_dim)``."""
        raw = self.tril(context)
        diag = F.softplus(raw[..., : self.dim]) + self.min_scale
        # (..., dim (dim-1)/2) lower entries + (..., dim) diagonal -> (..., dim, dim)
        L = raw.new_zeros(raw.shape[:-1] + (self.dim, self.dim))
        L[..., self.tril_rows, self.tril_cols] = raw[..., self.dim :]
        L = L + torch.diag_embed(diag)
        return L

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        return dist.MultivariateNormal(self.loc(context), scale_tril=self.scale_tril(context))

    def unconstrained_tril(self, scale_tril: torch.Tensor) -> torch.Tensor:
        """The raw output of ``self.tril`` that produces ``scale_tril``: the inverse of the parameterization.

        Useful to initialise the head at a known factor (set ``self.tril.weight`` to zero and
        ``self.tril.bias`` to this vector).

        :param torch.Tensor scale_tril: ``(..., dim, dim)`` lower-triangular with diagonal > ``min_scale``.
        """
        diag = scale_tril.diagonal(dim1=-2, dim2=-1)
        if not bool((diag > self.min_scale).all()):
            raise ValueError(f"fullcov head: the diagonal of scale_tril must exceed min_scale={self.min_scale}")
        excess = diag - self.min_scale
        raw_diag = inverse_softplus(excess)
        lower = scale_tril[..., self.tril_rows, self.tril_cols]
        return torch.cat([raw_diag, lower], dim=-1)

