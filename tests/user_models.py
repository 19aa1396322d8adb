"""Models and guides written by hand, as a user of ppl_vae would write them, for the 8x8 digits (64 pixels).

Configs name them by import path (``tests.user_models:tutorial_model``); the tests of the open core
train them through every tool.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.programs import load_target

X_DIM, Z_DIM, HIDDEN = 64, 4, 32


# -- Pyro's tutorial VAE, as two plain functions: those of examples/pyro_functions.py ------------------

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pyro_functions.py"
tutorial_model = load_target(f"{_EXAMPLE}:model")  # p(z) p(x|z), data site "obs", no labels in the signature
tutorial_guide = load_target(f"{_EXAMPLE}:guide")  # q(z|x)
decoder = load_target(f"{_EXAMPLE}:decoder")  # the network tutorial_model registers with pyro.module


# -- a Gaussian-mixture VAE, written by hand as factories of functions -------------------------------


def gmm_vae(num_components: int = 5, latent_dim: int = Z_DIM):
    """c ~ Cat(w), z ~ N(mu_c, sigma_c), x ~ Bernoulli(decoder(z)); w, mu and sigma are bare pyro.params."""
    net = nn.Sequential(nn.Linear(latent_dim, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, X_DIM))

    def model(x, y=None):
        pyro.module("gmm_decoder", net)
        weights = pyro.param("weights", lambda: torch.ones(num_components) / num_components, constraint=constraints.simplex)
        locs = pyro.param("locs", lambda: torch.randn(num_components, latent_dim))
        scales = pyro.param("scales", lambda: torch.ones(num_components, latent_dim), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(weights))
            z = pyro.sample("z", dist.Normal(locs[c], scales[c]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net(z)).to_event(1), obs=x)

    return model


def gmm_guide(num_components: int = 5, latent_dim: int = Z_DIM):
    """q(c|x) q(z|x) with one encoder."""
    net = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, num_components + 2 * latent_dim))

    def guide(x, y=None):
        pyro.module("gmm_encoder", net)
        with pyro.plate("data", x.shape[0]):
            out = net(x)
            logits, loc, raw = out.split([num_components, latent_dim, latent_dim], -1)
            pyro.sample("c", dist.Categorical(logits=logits))
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).to_event(1))

    return guide


# -- a module with two latent sites, and a guide that does not broadcast over particles ---------------


class TwoLatentVAE(PyroModule):
    """z1 ~ N(0, I), z2 ~ N(0, I), x ~ Bernoulli(decoder(z1, z2)); records its constructor arguments."""

    def __init__(self, z1_dim: int = 2, z2_dim: int = 3, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.init_args = {"z1_dim": z1_dim, "z2_dim": z2_dim, "hidden": hidden}
        self.z1_dim, self.z2_dim = z1_dim, z2_dim
        self.decoder = nn.Sequential(nn.Linear(z1_dim + z2_dim, hidden), nn.ReLU(), nn.Linear(hidden, X_DIM))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(self.z1_dim), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(torch.cat([z1, z2], -1))).to_event(1), obs=x)


class ChainGuide(PyroModule):
    """q(z1|x) q(z2|x, z1), correct for one particle; ``cat([h, z1])`` breaks with a leading particle dimension."""

    def __init__(self, z1_dim: int = 2, z2_dim: int = 3, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.init_args = {"z1_dim": z1_dim, "z2_dim": z2_dim, "hidden": hidden}
        self.body = nn.Sequential(nn.Linear(X_DIM, hidden), nn.ReLU())
        self.head1 = nn.Linear(hidden, 2 * z1_dim)
        self.head2 = nn.Linear(hidden + z1_dim, 2 * z2_dim)

    def forward(self, x, y=None):
        h = self.body(x)
        with pyro.plate("data", x.shape[0]):
            loc1, raw1 = self.head1(h).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc1, nn.functional.softplus(raw1) + 1e-4).to_event(1))
            loc2, raw2 = self.head2(torch.cat([h, z1], -1)).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc2, nn.functional.softplus(raw2) + 1e-4).to_event(1))


# -- a module that takes its likelihood from the registry, and a guide for it -------------------------


class LikelihoodVAE(PyroModule):
    """z ~ N(0, I), x ~ likelihood(decoder(z)), with ``x_shape`` injected from the data."""

    def __init__(self, x_shape: tuple[int, ...], likelihood: str = "bernoulli", latent_dim: int = 3, hidden: int = 7) -> None:
        super().__init__()
        from ppl_vae.likelihoods import make_likelihood

        self.init_args = {"likelihood": likelihood, "latent_dim": latent_dim, "hidden": hidden}
        self.x_shape, self.latent_dim = tuple(x_shape), latent_dim
        self.likelihood = make_likelihood(likelihood, self.x_shape)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.likelihood.num_outputs))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=self.likelihood.observe(x))


class LinearGuide(PyroModule):
    """q(z|x) = N(A x + b, softplus(C x + d)) for a model with one latent site z."""

    def __init__(self, x_shape: tuple[int, ...], latent_dim: int = 3) -> None:
        super().__init__()
        self.x_size = int(torch.tensor(x_shape).prod())
        self.linear = nn.Linear(self.x_size, 2 * latent_dim)

    def forward(self, x, y=None):
        flat = x.reshape(*x.shape[: x.dim() - 1 if x.dim() == 2 else x.dim() - 3], self.x_size)
        loc, raw = self.linear(flat).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1))


def not_a_factory():
    """Called as a factory (``factory: true``), returns no model."""
    return 3


def broken_model(x, y=None):
    """Fails on every call, as a model with a bug would."""
    raise ValueError("this model has a bug")
