"""The standard variational autoencoder as a Pyro model."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..likelihoods import LIKELIHOODS, make_likelihood
from ..nets import ACTIVATIONS, MLP, check_choice

__all__ = ["VAE", "VAEConfig"]


def check_positive_int(owner: str, name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def check_sizes(owner: str, name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a sequence of positive ints."""
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{owner}.{name} must be a list of positive ints, got {value!r}")
    for v in value:
        check_positive_int(owner, name, v)


@dataclass(frozen=True)
class VAEConfig:
    """Configuration of :class:`VAE` (the ``model:`` section of a config, with ``name: vae``)."""

    latent_dim: int = 20  # size of z
    hidden_dims: tuple[int, ...] = (400,)  # decoder hidden layer sizes, z -> ... -> x
    activation: str = "relu"  # decoder activation, a key of ppl_vae.nets.ACTIVATIONS
    likelihood: str = "bernoulli"  # p(x|z), a key of ppl_vae.likelihoods.LIKELIHOODS
    x_scale: float = 0.1  # normal likelihoods: the fixed (normal) or initial (normal_learned) scale
    allow_nonbinary: bool = False  # let a bernoulli likelihood see grey levels (improper; opt-in)

    def __post_init__(self) -> None:
        check_positive_int("model", "latent_dim", self.latent_dim)
        check_sizes("model", "hidden_dims", self.hidden_dims)
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        if not self.x_scale > 0:
            raise ValueError(f"model.x_scale must be > 0, got {self.x_scale!r}")


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
            config.likelihood,
            self.x_shape,
            scale=config.x_scale,
            allow_nonbinary=config.allow_nonbinary,
        )
        self.decoder = MLP(config.latent_dim, config.hidden_dims, self.likelihood.num_outputs, config.activation)
        # Buffers, so the prior follows the module across devices and dtypes.
        self.register_buffer("prior_loc", torch.zeros(config.latent_dim))
        self.register_buffer("prior_scale", torch.ones(config.latent_dim))

    def z_dist(self) -> dist.TorchDistribution:
        """The prior p(z), with event shape ``(latent_dim,)``."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def x_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The likelihood p(x | z) for ``z`` of shape ``(..., latent_dim)``."""
        return self.likelihood(self.decoder(z))

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, num_samples: int | None = None):
        """Score ``x`` (shape ``(batch, *x_shape)``), or generate ``num_samples`` points when ``x`` is None."""
        batch = x.shape[0] if x is not None else num_samples
        if batch is None:
            raise ValueError("VAE needs data x or num_samples to generate")
        obs = None if x is None else self.likelihood.observe(x)
        with pyro.plate("data", batch):
            z = pyro.sample("z", self.z_dist())
            return pyro.sample("x", self.x_dist(z), obs=obs)
