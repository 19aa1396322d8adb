r"""A learned prior over VQ-VAE codes: a gated PixelCNN over the grid of code indices (van den Oord et al., 2017).

A trained VQ-VAE maps an image to a grid ``(h, w)`` of code indices in ``0..K-1``. :class:`PixelCNNPrior` models
those grids autoregressively in raster order,

.. math::

    p(c) = \prod_{i=1}^{hw} p(c_i \mid c_{<i}),

each factor a K-way categorical whose logits come from a :class:`~ppl_vae.pixelcnn.GatedPixelCNN` with K
outputs per position. The causal masks make the logits at position i a function of the codes before i only, so

- :meth:`PixelCNNPrior.log_prob` is exact in one pass of the network (teacher forcing);
- :meth:`PixelCNNPrior.sample` draws position by position (one pass per position; the grids are small: 7x7
  for MNIST, 2x2 for the 8x8 digits);
- bits per dimension are ``-log p(c) / (h * w * ln 2)``; the uniform prior's are ``log2 K``.

The network reads each code through a learned embedding of one number per code (the PixelCNN takes one input
channel), so the input is not an ordinal reading of the index. Flat VQ-VAEs (``num_latents`` codes) are treated
as a ``1 x num_latents`` grid.

The trained prior replaces the uniform one of a :class:`~ppl_vae.models.vqvae.VQVAE` with
:meth:`~ppl_vae.models.vqvae.VQVAE.set_code_prior` (for sampling); it is trained by
:func:`ppl_vae.inference.code_prior.fit_code_prior`.

References

- van den Oord, A., Vinyals, O. & Kavukcuoglu, K. (2017). Neural Discrete Representation Learning. NeurIPS.
- van den Oord, A., Kalchbrenner, N., Vinyals, O., Espeholt, L., Graves, A. & Kavukcuoglu, K. (2016).
  Conditional Image Generation with PixelCNN Decoders. NeurIPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from ..contract import DATA_PLATE, DATA_SITE
from ..pixelcnn import GatedPixelCNN, PixelCNNConfig
from ..schema import POSITIVE, POSITIVE_INT, check_fields, documented, int_at_least

__all__ = ["CodePriorConfig", "PixelCNNPrior", "grid_of"]


@documented
@dataclass(frozen=True)
class CodePriorConfig:
    """The PixelCNN prior over codes and its training (``ppl-vae fit-prior`` options)."""

    #: gated layers of the PixelCNN
    num_layers: int = 4
    #: feature channels of each stack
    channels: int = 32
    #: kernel width (odd, >= 3)
    kernel_size: int = 3
    #: passes over the training codes
    epochs: int = 20
    #: code grids per step
    batch_size: int = 64
    #: Adam's learning rate
    lr: float = 0.003
    #: seed of the initialisation and of the batch order
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "prior", num_layers=POSITIVE_INT, channels=POSITIVE_INT, kernel_size=int_at_least(3),
                     epochs=POSITIVE_INT, batch_size=POSITIVE_INT, lr=POSITIVE, seed=int_at_least(0))


def grid_of(latent_shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D grid the prior sees for a VQ-VAE's ``latent_shape``: ``(h, w)`` as is, ``(n,)`` as ``(1, n)``."""
    if len(latent_shape) == 2:
        return int(latent_shape[0]), int(latent_shape[1])
    if len(latent_shape) == 1:
        return 1, int(latent_shape[0])
    raise ValueError(f"a code prior models a grid (h, w) or a set (n,) of codes, got latent shape {tuple(latent_shape)}")


class PixelCNNPrior(nn.Module):
    """p(c) over grids of code indices ``latent_shape`` with values in ``0..num_codes-1`` (see the module docstring).

    :param int num_codes: K.
    :param tuple latent_shape: the VQ-VAE's code positions, ``(h, w)`` or ``(n,)``.
    :param CodePriorConfig config: the network's size (training settings are read by ``fit_code_prior``).
    """

    def __init__(self, num_codes: int, latent_shape: tuple[int, ...], config: CodePriorConfig | None = None) -> None:
        super().__init__()
        self.config = config or CodePriorConfig()
        self.num_codes = int(num_codes)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.grid = grid_of(self.latent_shape)
        c = self.config
        self.embed = nn.Embedding(self.num_codes, 1)
        self.net = GatedPixelCNN(1, PixelCNNConfig(num_layers=c.num_layers, channels=c.channels, kernel_size=c.kernel_size),
                                 num_outputs=self.num_codes)

    @property
    def num_positions(self) -> int:
        """h * w, the dimensions bits per dimension are counted over."""
        return self.grid[0] * self.grid[1]

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, h, w)`` of p(c_i | c_<i) for codes ``(N, h, w)``."""
        return self.net(self.embed(codes.long()).squeeze(-1).unsqueeze(1))

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(c), exact, one pass: ``codes`` ``(..., *latent_shape)`` -> ``(...)``."""
        batch = codes.shape[: codes.dim() - len(self.latent_shape)]
        flat = codes.reshape(-1, *self.grid).long()
        per_position = F.log_softmax(self.logits(flat), dim=1).gather(1, flat.unsqueeze(1))
        return per_position.reshape(flat.shape[0], -1).sum(-1).reshape(batch)

    def bits_per_dim(self, codes: torch.Tensor) -> torch.Tensor:
        """-log2 p(c) / (h * w) per grid, ``(...)``."""
        return -self.log_prob(codes) / (self.num_positions * math.log(2))

    @torch.no_grad()
    def sample_with_log_probs(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` grids position by position: codes ``(n, *latent_shape)`` and the log-probability of
        each step ``(n, h * w)`` in raster order (their sum is ``log_prob`` of the codes)."""
        device = self.embed.weight.device
        codes = torch.zeros(num_samples, *self.grid, dtype=torch.long, device=device)
        steps = torch.zeros(num_samples, *self.grid, device=device)
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                step = torch.distributions.Categorical(logits=self.logits(codes)[:, :, i, j])
                codes[:, i, j] = step.sample()
                steps[:, i, j] = step.log_prob(codes[:, i, j])
        return codes.reshape(num_samples, *self.latent_shape), steps.reshape(num_samples, -1)

    def sample(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` grids of codes ``(n, *latent_shape)``, drawn position by position."""
        return self.sample_with_log_probs(num_samples)[0]


class CodeGrid(TorchDistribution):
    """The distribution of a :class:`PixelCNNPrior` over code grids, event shape ``latent_shape``."""

    arg_constraints: dict = {}
    support = constraints.nonnegative_integer

    def __init__(self, prior: PixelCNNPrior, batch_shape=torch.Size(), validate_args=None) -> None:
        self.prior = prior
        super().__init__(torch.Size(batch_shape), torch.Size(prior.latent_shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "CodeGrid":
        return CodeGrid(self.prior, batch_shape, validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.prior.log_prob(value)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return self.prior.sample(max(1, math.prod(shape))).reshape(*shape, *self.event_shape)


class CodePriorModel(PyroModule):
    """p(c) as a Pyro model with no latent variable: the code grid is the observed data site, so its ELBO (with
    :class:`NoLatents` as the guide) is the exact log-likelihood, and ``ppl_vae.fit`` trains it."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return pyro.sample(DATA_SITE, CodeGrid(self.prior), obs=x)


class NoLatents(PyroModule):
    """The guide of a model with no latent variable: it samples nothing."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        return None
