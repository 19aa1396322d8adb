r"""The vector-quantised variational autoencoder (VQ-VAE) of van den Oord et al. (2017) as a Pyro program.

The pieces, and which object owns them:

- :class:`VQVAE`, the **model** p(x|z)p(z). It owns the codebook (K vectors of size D) and the decoder.
  Its latent site ``z`` holds the quantised vectors, a grid ``(h, w, D)`` for images or a set
  ``(num_latents, D)`` for flat data; its prior :class:`UniformCodes` is uniform over the K codes at every
  position.
- :class:`VQVAEGuide`, the **guide** q(z|x). It owns the encoder and reaches the codebook through the model
  it was built for (a reference, not a submodule, so the codebook is trained and checkpointed once, as the
  model's). It is built from the model (``guide.name: vqvae``), and reads every setting from the model's
  :class:`VQVAEConfig`; the guide has no settings of its own.

Why a module and not a shipped spec: a spec's latents are families with their own parameters, and its guide
heads are densities of the context; none can share a learned codebook between the model and the guide or give
the straight-through value, so the spec cannot express VQ-VAE.

Why this design. VQ-VAE's latent is a categorical code per position, and its guide is deterministic: a point
mass at the nearest codes. Holding the quantised *vectors* at the latent site (rather than the code indices)
keeps one site, ``z``, and lets the guide return the straight-through value: a ``Delta`` whose value equals
the nearest codebook vectors in the forward pass and carries the decoder's gradient to the encoder unchanged.
The model's prior at that site has the log-density of the uniform code prior, the constant
:math:`-hw\log K` (with respect to counting measure on the codebook vectors), and draws uniform codes when
sampled (``ppl-vae sample``). ``Trace_ELBO`` then computes

.. math::

    \mathcal{L}(x) = -\log p(x \mid z_q(x)) + hw \log K
        + \lVert \mathrm{sg}(z_e(x)) - e \rVert^2 + \beta \lVert z_e(x) - \mathrm{sg}(e) \rVert^2 ,

the negative ELBO of the paper (the KL of a point mass to the uniform prior is :math:`hw \log K`) plus the
codebook and commitment terms, which the guide adds with :func:`~ppl_vae.contract.add_penalty` (reported as
``term_codebook`` and ``term_commitment``). The squared norms are summed over positions and dimensions (nats
per data point, like the likelihood). With ``ema_decay > 0`` the codebook is not trained by a loss term but
by exponential moving averages of the encoder outputs assigned to each code (buffers, so checkpoints carry
them; updated only in training mode with gradients on), and ``term_codebook`` is absent.

References

- van den Oord, A., Vinyals, O. & Kavukcuoglu, K. (2017). Neural Discrete Representation Learning. NeurIPS.
- Bengio, Y., Léonard, N. & Courville, A. (2013). Estimating or Propagating Gradients Through Stochastic
  Neurons for Conditional Computation. (The straight-through estimator.)
- Łańcucki, A. et al. (2020). Robust Training of Vector Quantized Bottleneck Models. IJCNN. (Dead-code reset.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import nn

from ..contract import DATA_PLATE, DATA_SITE, add_penalty
from ..errors import ConfigError
from ..likelihoods import LIKELIHOODS, make_likelihood
from ..nets import ACTIVATIONS
from ..schema import BOOL, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SIZES, check_fields, documented, number_in, one_of
from .vqvae_nets import GridDecoder, GridEncoder, SetDecoder, SetEncoder

__all__ = ["VQVAE", "VQVAEConfig", "VQVAEGuide", "VQVAEGuideConfig", "UniformCodes", "LearnedCodes", "nearest_codes", "straight_through"]


#: the encoder (and mirrored decoder) kinds of a VQ-VAE
ENCODERS = ("auto", "conv", "mlp")


@documented
@dataclass(frozen=True)
class VQVAEConfig:
    """Configuration of :class:`VQVAE` (the ``model:`` section of a config, with ``name: vqvae``)."""

    #: K, the number of codebook vectors
    num_codes: int = 512
    #: D, the size of each codebook vector
    code_dim: int = 64
    #: "conv": a conv encoder and decoder and a grid of codes (images, data.flatten: false); "mlp": MLPs and
    #: num_latents codes; "auto": conv for images of shape (C, H, W), mlp for flat data
    encoder: str = "auto"
    #: conv: output channels of each stride-2 conv layer of the encoder (the decoder
    #: mirrors them); the code grid is the image shrunk by 2 per layer (28x28 -> 7x7 with two layers)
    channels: tuple[int, ...] = (32, 64)
    #: mlp: hidden layer sizes of the MLP encoder (the decoder mirrors them)
    hidden_dims: tuple[int, ...] = (400,)
    #: mlp: how many code vectors encode one data point
    num_latents: int = 16
    #: encoder and decoder activation, a key of ppl_vae.nets.ACTIVATIONS
    activation: str = "relu"
    #: p(x|z), a key of ppl_vae.likelihoods.LIKELIHOODS
    likelihood: str = "bernoulli"
    #: normal likelihoods: the fixed (normal) or initial (normal_learned) scale
    x_scale: float = 0.1
    #: let a bernoulli likelihood see grey levels (improper; opt-in)
    allow_nonbinary: bool = False
    #: beta, the weight of the commitment term beta * |z_e - sg(e)|^2
    beta: float = 0.25
    #: 0: the codebook is learned through the codebook term; in (0, 1): by an exponential moving average
    #: with this decay (0.99 in the paper), and there is no codebook term
    ema_decay: float = 0.0
    #: the additive (Laplace) smoothing of the EMA code counts
    ema_epsilon: float = 1e-5
    #: dead-code reset: every this many training steps, codes no encoder output was assigned to in those
    #: steps are moved to random encoder outputs of the current batch; 0: off
    reset_every: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self, "model", num_codes=POSITIVE_INT, code_dim=POSITIVE_INT, encoder=one_of(ENCODERS), channels=SIZES, hidden_dims=SIZES,
            num_latents=POSITIVE_INT, activation=one_of(ACTIVATIONS), likelihood=one_of(LIKELIHOODS),
            x_scale=POSITIVE, allow_nonbinary=BOOL, beta=number_in(0.0), ema_decay=number_in(0.0, 1.0, high_open=True),
            ema_epsilon=POSITIVE, reset_every=NON_NEGATIVE_INT,
        )


@documented
@dataclass(frozen=True)
class VQVAEGuideConfig:
    """The ``guide:`` section for ``name: vqvae``. It has no keys: the guide is built from its model's
    :class:`VQVAEConfig` (encoder sizes, codebook, beta, EMA, dead-code reset)."""


def nearest_codes(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The index of the nearest codebook vector (squared Euclidean distance) to each vector of ``z_e``.

    :param torch.Tensor z_e: encoder outputs ``(..., D)``.
    :param torch.Tensor codebook: ``(K, D)``.
    :returns: a long tensor of shape ``z_e.shape[:-1]``.
    """
    flat = z_e.detach().reshape(-1, z_e.shape[-1])  # (num_vectors, D)
    # |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is the same for every code, so it is left out of the argmin.
    distances = codebook.detach().pow(2).sum(-1) - 2 * flat @ codebook.detach().T  # (num_vectors, K)
    return distances.argmin(-1).reshape(z_e.shape[:-1])


def straight_through(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``e`` in the forward pass, with the gradient of ``z_e`` (the identity) in the backward pass."""
    return z_e + (e - z_e).detach()


class UniformCodes(dist.TorchDistribution):
    r"""The uniform prior over codes, represented by their codebook vectors.

    Its value is a grid (or set) of codebook vectors, event shape ``(*latent_shape, D)``. ``log_prob`` is the
    log-mass of the uniform code prior, :math:`-\prod(\text{latent\_shape}) \log K`, for any value: it is
    only ever scored at codebook vectors (the guide's quantised codes). ``sample`` draws a code uniformly at
    every position and returns its vectors.

    :param torch.Tensor codebook: ``(K, D)``.
    :param tuple latent_shape: the positions, ``(h, w)`` or ``(num_latents,)``.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, codebook: torch.Tensor, latent_shape: tuple[int, ...], batch_shape=torch.Size(), validate_args=None) -> None:
        self.codebook = codebook
        self.latent_shape = torch.Size(latent_shape)
        self.num_positions = math.prod(self.latent_shape)
        super().__init__(torch.Size(batch_shape), self.latent_shape + codebook.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> UniformCodes:
        return UniformCodes(self.codebook, self.latent_shape, batch_shape, validate_args=self._validate_args)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.latent_shape
        with torch.no_grad():
            codes = torch.randint(self.codebook.shape[0], shape, device=self.codebook.device)
            return self.codebook[codes]  # (*sample_shape, *batch_shape, *latent_shape, D)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        batch = torch.broadcast_shapes(value.shape[: value.dim() - len(self.event_shape)], self.batch_shape)
        return value.new_full(batch, -self.num_positions * math.log(self.codebook.shape[0]))


class LearnedCodes(UniformCodes):
    """A learned prior over codes (e.g. :class:`~ppl_vae.models.code_prior.PixelCNNPrior`), as codebook vectors.

    ``sample`` draws code grids from the prior and returns their vectors; ``log_prob`` maps a value back to its
    nearest codes and scores them (exact at codebook vectors, the only values it is scored at).

    :param torch.Tensor codebook: ``(K, D)``.
    :param code_prior: an object with ``log_prob(codes)`` and ``sample(n)`` over codes ``(..., *latent_shape)``.
    """

    def __init__(self, codebook: torch.Tensor, code_prior, batch_shape=torch.Size(), validate_args=None) -> None:
        self.code_prior = code_prior
        super().__init__(codebook, code_prior.latent_shape, batch_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> LearnedCodes:
        return LearnedCodes(self.codebook, self.code_prior, batch_shape, validate_args=self._validate_args)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            codes = self.code_prior.sample(max(1, math.prod(shape))).to(self.codebook.device)
            return self.codebook[codes].reshape(*shape, *self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.code_prior.log_prob(nearest_codes(value, self.codebook))


class VQVAE(PyroModule):
    r"""The VQ-VAE of van den Oord et al. (2017) as a Pyro model (see the module docstring for the design).

    Generative story, for each data point in the plate ``data``::

        c_j ~ Uniform{1..K}  for each position j        # the codes, uniform prior
        z = (e[c_j])_j ~ UniformCodes(codebook)         # site "z": their codebook vectors, (h, w, D) or (n, D)
        x ~ p(x | z) = likelihood(decoder(z))           # site "x", observed

    Images (``x_shape`` of length 3) get a conv encoder and decoder and a grid of codes; flat data (or
    ``encoder: mlp``) MLPs and ``num_latents`` codes.

    :param tuple x_shape: shape of one observation, e.g. ``(1, 28, 28)`` or ``(784,)``.
    :param VQVAEConfig config: codebook, networks, likelihood, beta, EMA and dead-code reset. Defaults to
        ``VQVAEConfig()``.

    References

    - van den Oord, A., Vinyals, O. & Kavukcuoglu, K. (2017). Neural Discrete Representation Learning. NeurIPS.
    """

    #: what ``ppl-vae sample`` says of its samples under the uniform prior
    UNIFORM_NOTE = "codes drawn uniformly: no learned prior yet"
    #: ... and under a learned prior (:meth:`set_code_prior`)
    LEARNED_NOTE = "codes drawn from the learned PixelCNN prior (RUN/prior), decoded"

    def __init__(self, x_shape: tuple[int, ...], config: VQVAEConfig | None = None) -> None:
        super().__init__()
        config = config or VQVAEConfig()
        self.config = config
        self.x_shape = tuple(int(s) for s in x_shape)
        self.likelihood = make_likelihood(
            config.likelihood, self.x_shape, scale=config.x_scale, allow_nonbinary=config.allow_nonbinary,
            option_key="model.allow_nonbinary",
        )
        self.decoder, self.latent_shape = self._make_decoder()
        self._make_codebook()
        # A tuple, so a learned prior is referenced, not registered: the VQ-VAE's checkpoint stays as it was.
        self._code_prior: tuple = ()

    @property
    def code_prior(self):
        """The learned prior over codes set by :meth:`set_code_prior`, or None (uniform codes)."""
        return self._code_prior[0] if self._code_prior else None

    def set_code_prior(self, prior) -> None:
        """Draw ``z`` from a learned prior over codes (e.g. a trained PixelCNNPrior) instead of uniform codes;
        None restores the uniform prior. Meant for sampling after training: the VQ-VAE is trained with uniform codes."""
        if prior is not None and tuple(prior.latent_shape) != tuple(self.latent_shape):
            raise ValueError(f"the code prior models codes of shape {tuple(prior.latent_shape)}, this VQ-VAE has {tuple(self.latent_shape)}")
        self._code_prior = () if prior is None else (prior,)

    @property
    def sample_note(self) -> str:
        """What ``ppl-vae sample`` says of its samples."""
        return self.UNIFORM_NOTE if self.code_prior is None else self.LEARNED_NOTE

    @property
    def is_conv(self) -> bool:
        """Whether the encoder and decoder are convolutional (a grid of codes)."""
        return self.config.encoder == "conv" or (self.config.encoder == "auto" and len(self.x_shape) == 3)

    def _make_decoder(self) -> tuple[nn.Module, tuple[int, ...]]:
        c = self.config
        if self.is_conv:
            encoder = GridEncoder(self.x_shape, c.channels, c.code_dim, c.activation)  # checks the image shape
            latent_shape = encoder.grid[1:]
            return GridDecoder(c.code_dim, self.x_shape, c.channels, c.activation, self.likelihood.params_per_element), latent_shape
        hidden = tuple(reversed(c.hidden_dims))
        return SetDecoder(c.num_latents, c.code_dim, hidden, self.likelihood.num_outputs, c.activation), (c.num_latents,)

    def _make_codebook(self) -> None:
        c = self.config
        init = torch.empty(c.num_codes, c.code_dim).uniform_(-1.0 / c.num_codes, 1.0 / c.num_codes)
        if c.ema_decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(c.num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Codes assigned since the last dead-code check, and the training steps since then.
        self.register_buffer("usage", torch.zeros(c.num_codes))
        self.register_buffer("steps_since_reset", torch.zeros((), dtype=torch.long))

    def make_encoder(self) -> nn.Module:
        """A fresh encoder x -> z_e for this model's data and code shape (the guide owns it)."""
        c = self.config
        if self.is_conv:
            return GridEncoder(self.x_shape, c.channels, c.code_dim, c.activation)
        return SetEncoder(self.x_shape, c.hidden_dims, c.num_latents, c.code_dim, c.activation)

    def z_dist(self) -> UniformCodes:
        """The prior p(z): uniform codes at every position (or the learned prior), as codebook vectors."""
        if self.code_prior is not None:
            return LearnedCodes(self.codebook, self.code_prior)
        return UniformCodes(self.codebook, self.latent_shape)

    def x_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The likelihood p(x | z) for ``z`` of shape ``(..., *latent_shape, D)``."""
        return self.likelihood(self.decoder(z))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Score the batch ``x`` (shape ``(batch, *x_shape)``); the labels ``y`` are not used."""
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            return pyro.sample(DATA_SITE, self.x_dist(z), obs=self.likelihood.observe(x))

    # -- codebook upkeep, called by the guide in training mode ------------------------------------------

    @torch.no_grad()
    def reset_dead_codes(self, z_e: torch.Tensor, codes: torch.Tensor) -> int:
        """Count this batch's codes; every ``reset_every`` steps move the codes unused since the last check to
        random encoder outputs of this batch. Returns how many were moved."""
        self.usage += torch.bincount(codes.reshape(-1), minlength=self.config.num_codes).to(self.usage.dtype)
        self.steps_since_reset += 1
        if int(self.steps_since_reset) < self.config.reset_every:
            return 0
        dead = (self.usage == 0).nonzero().squeeze(-1)
        if dead.numel():
            flat = z_e.detach().reshape(-1, z_e.shape[-1])  # (num_vectors, D)
            chosen = flat[torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)]
            self.codebook[dead] = chosen.to(self.codebook.dtype)
            if self.config.ema_decay > 0:
                self.ema_sum[dead] = chosen.to(self.ema_sum.dtype)
                self.ema_count[dead] = 1.0
        self.usage.zero_()
        self.steps_since_reset.zero_()
        return int(dead.numel())

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """Move each code to the (smoothed) moving average of the encoder outputs assigned to it."""
        c = self.config
        flat_codes, flat = codes.reshape(-1), z_e.detach().reshape(-1, z_e.shape[-1]).to(self.ema_sum.dtype)
        counts = torch.bincount(flat_codes, minlength=c.num_codes).to(self.ema_count.dtype)  # (K,)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, flat_codes, flat)  # (K, D)
        self.ema_count.mul_(c.ema_decay).add_(counts, alpha=1 - c.ema_decay)
        self.ema_sum.mul_(c.ema_decay).add_(sums, alpha=1 - c.ema_decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + c.ema_epsilon) / (total + c.num_codes * c.ema_epsilon) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(-1))


class VQVAEGuide(PyroModule):
    r"""The deterministic guide of a :class:`VQVAE`: q(z|x) is a point mass at the nearest codebook vectors.

    For each data point in the plate ``data``::

        z_e = encoder(x)                                   # (h, w, D) or (num_latents, D)
        c_j = argmin_k |z_e,j - e_k|                       # nearest codes
        z ~ Delta(z_e + sg(e[c] - z_e))                    # site "z": e[c], with the straight-through gradient
        codebook term   |sg(z_e) - e[c]|^2                 # add_penalty("codebook", ...), unless EMA
        commitment term beta |z_e - sg(e[c])|^2            # add_penalty("commitment", ...)

    In training mode (with gradients on) it also keeps the codebook: the EMA update and the dead-code reset
    when the model's config asks for them. Under ``torchrun`` the buffers (EMA state, usage counts) are rank
    0's after every step, as DDP broadcasts buffers; a dead-code reset of a codebook trained by its loss term
    (``ema_decay: 0``) happens on each rank from its own batch, so it is meant for one process.

    :param VQVAE model: the model whose codebook it quantises to.
    :param VQVAEGuideConfig config: no settings (the model's config holds them).
    """

    #: a point mass, as :class:`~ppl_vae.heads.base.DeltaHead`: no density to importance-sample log p(x) with
    deterministic = True

    def __init__(self, model: VQVAE, config: VQVAEGuideConfig | None = None) -> None:
        super().__init__()
        if not isinstance(model, VQVAE):
            raise ValueError(f"the vqvae guide pairs with a vqvae model, got {type(model).__name__}")
        self.config = config or VQVAEGuideConfig()
        self.encoder = model.make_encoder()
        # A tuple, so the model is referenced and not registered: the codebook is the model's parameter.
        self._model = (model,)
        self.x_shape = model.x_shape

    @property
    def model(self) -> VQVAE:
        """The model whose codebook this guide uses."""
        return self._model[0]

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_e, codes, e)``: the encoder outputs, the nearest codes and their codebook vectors."""
        model = self.model
        z_e = self.encoder(x)  # (B, *latent_shape, D)
        codes = nearest_codes(z_e, model.codebook)
        if self.training and torch.is_grad_enabled() and model.config.reset_every:
            model.reset_dead_codes(z_e, codes)  # before the codebook enters this step's graph
        return z_e, codes, model.codebook[codes]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if torch.jit.is_tracing() and (model.config.ema_decay > 0 or model.config.reset_every):
            # A compiled program would replay one trace: the reset's branch frozen, the EMA not kept in step.
            raise ConfigError(
                "the vqvae guide keeps its codebook in Python (ema_decay > 0 or reset_every > 0), which a compiled "
                "estimator (jit_*) cannot replay; use its plain twin (jit_trace -> trace)"
            )
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z_e, codes, e = self.quantize(x)
            dims = tuple(range(-len(model.latent_shape) - 1, 0))
            if model.config.ema_decay == 0:
                add_penalty("codebook", (z_e.detach() - e).pow(2).sum(dims))
            add_penalty("commitment", model.config.beta * (z_e - e.detach()).pow(2).sum(dims))
            z = pyro.sample("z", dist.Delta(straight_through(z_e, e), event_dim=len(dims)))
        if model.config.ema_decay > 0 and self.training and torch.is_grad_enabled():
            model.ema_update(z_e, codes)
        return z
