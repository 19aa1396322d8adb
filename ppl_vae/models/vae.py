"""The standard variational autoencoder as a Pyro model."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..contract import DATA_PLATE, DATA_SITE
from ..likelihoods import LIKELIHOODS, make_likelihood
from ..nets import ACTIVATIONS, MLP, activation
from ..pixelcnn import PixelCNNConfig
from ..schema import (
    BOOL,
    POSITIVE,
    POSITIVE_INT,
    SIZES,
    check_fields,
    documented,
    one_of,
)

__all__ = ["VAE", "VAEConfig"]


@documented
@dataclass(frozen=True)
class VAEConfig:
    """Configuration of :class:`VAE` (the ``model:`` section of a config, with ``name: vae``)."""

    #: size of z
    latent_dim: int = 20
    #: decoder hidden layer sizes, z -> ... -> x
    hidden_dims: tuple[int, ...] = (400,)
    #: decoder activation, a key of ppl_vae.nets.ACTIVATIONS
    activation: str = "relu"
    #: p(x|z), a key of ppl_vae.likelihoods.LIKELIHOODS
    likelihood: str = "bernoulli"
    #: normal likelihoods: the fixed (normal) or initial (normal_learned) scale
    x_scale: float = 0.1
    #: let a bernoulli likelihood see grey levels (improper; opt-in)
    allow_nonbinary: bool = False
    #: apply the activation to z before the decoder (the inner stages of a stacked autoencoder, ppl_vae.stacked)
    code_activation: bool = False
    #: the network of a pixelcnn likelihood (ppl_vae.pixelcnn.PixelCNNConfig); None: its defaults
    pixelcnn: PixelCNNConfig | None = None

    def __post_init__(self) -> None:
        check_fields(
            self, "model", latent_dim=POSITIVE_INT, hidden_dims=SIZES, activation=one_of(ACTIVATIONS),
            likelihood=one_of(LIKELIHOODS), x_scale=POSITIVE, allow_nonbinary=BOOL, code_activation=BOOL,
        )


class VAE(PyroModule):
    r"""The variational autoencoder of Kingma & Welling (2014) as a Pyro model.

    Generative story, for each data point in the plate ``data``::

        z ~ p(z) = Normal(0, I)                    # site "z", shape (latent_dim,)
        x ~ p(x | z) = likelihood(decoder(z))      # site "x", observed

    :param tuple x_shape: shape of one observation, e.g. ``(784,)``.
    :param VAEConfig config: sizes, activation and likelihood. Defaults to ``VAEConfig()``.

    References

    - Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
    - Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic Backpropagation and
      Approximate Inference in Deep Generative Models. ICML.
    """

    def __init__(self, x_shape: tuple[int, ...], config: VAEConfig | None = None) -> None:
        super().__init__()
        config = config or VAEConfig()
        self.config = config
        self.x_shape = tuple(int(s) for s in x_shape)
        self.latent_dim = config.latent_dim
        self.likelihood = make_likelihood(
            config.likelihood, self.x_shape, scale=config.x_scale, allow_nonbinary=config.allow_nonbinary,
            option_key="model.allow_nonbinary", pixelcnn=config.pixelcnn,
        )
        self.decoder = MLP(config.latent_dim, config.hidden_dims, self.likelihood.num_outputs, config.activation)
        # parameter-free, so the state dict is that of a plain VAE
        self.code_activation = activation(config.activation) if config.code_activation else torch.nn.Identity()
        # Buffers, so the prior follows the module across devices and dtypes.
        self.register_buffer("prior_loc", torch.zeros(config.latent_dim))
        self.register_buffer("prior_scale", torch.ones(config.latent_dim))

    def z_dist(self) -> dist.TorchDistribution:
        """The prior p(z), with event shape ``(latent_dim,)``."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def x_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The likelihood p(x | z) for ``z`` of shape ``(..., latent_dim)``."""
        return self.likelihood(self.decoder(self.code_activation(z)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Score the batch ``x`` (shape ``(batch, *x_shape)``); the labels ``y`` are not used."""
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            return pyro.sample(DATA_SITE, self.x_dist(z), obs=self.likelihood.observe(x))
