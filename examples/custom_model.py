"""Bring your own Pyro model and guide: a VAE with a heavy-tailed Student-t prior.

Any ``PyroModule`` whose ``forward(x, y=None)`` puts the data in a plate named
``data`` trains with the same :func:`ppl_vae.fit` and evaluates with the same
:func:`ppl_vae.evaluate` as the shipped models (docs/bring_your_own_model.md
states the contract). Here the prior is z ~ StudentT(df, 0, 1) instead of a
Normal, with a likelihood from the registry, and the registry's amortized guide
is built for it from a trace of the model.

    python examples/custom_model.py --epochs 30
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

import ppl_vae
from ppl_vae.likelihoods import make_likelihood
from ppl_vae.nets import MLP


class StudentTVAE(PyroModule):
    """z ~ StudentT(df, 0, I);  x ~ Bernoulli(logits = decoder(z))."""

    def __init__(self, x_dim: int, latent_dim: int = 4, hidden_dim: int = 64, df: float = 3.0) -> None:
        super().__init__()
        self.x_shape = (x_dim,)
        self.latent_dim = latent_dim
        self.likelihood = make_likelihood("bernoulli", self.x_shape)
        self.decoder = MLP(latent_dim, (hidden_dim,), self.likelihood.num_outputs)
        self.register_buffer("df", torch.tensor(df))

    def z_dist(self) -> dist.TorchDistribution:
        zeros = torch.zeros(self.latent_dim, device=self.df.device)
        return dist.StudentT(self.df, zeros, torch.ones_like(zeros)).to_event(1)

    def x_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        return self.likelihood(self.decoder(z))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            return pyro.sample("x", self.x_dist(z), obs=x)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=500, help="importance samples K for log p(x)")
    args = parser.parse_args(argv)

    data = ppl_vae.load_dataset(ppl_vae.DataConfig(name="digits", num_train=args.num_train))
    model = StudentTVAE(data.x_shape[0])
    # Any guide that pairs with the model by site name works; the registry's amortized guide reads the
    # model's latent site z (its shape and support) from a trace and puts a diagonal Normal on it.
    guide = ppl_vae.make_guide("amortized", model, ppl_vae.AmortizedGuideConfig(hidden_dims=(64,)))
    ppl_vae.fit(model, guide, data, optim=ppl_vae.OptimConfig(lr=3e-3),
                train=ppl_vae.TrainConfig(epochs=args.epochs, batch_size=32, device="cpu", val_every=0))
    test = ppl_vae.evaluate(model, guide, data.x_test, config=ppl_vae.EvalConfig(num_samples=args.num_samples))
    print(f"Student-t prior VAE: test ELBO {test.elbo:.2f}, log p(x) {test.log_likelihood:.2f} nats")
    return {"elbo": test.elbo, "log_likelihood": test.log_likelihood}


if __name__ == "__main__":
    main()
