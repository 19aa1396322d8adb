"""Pyro's tutorial VAE, written as two plain functions, trained and compared with ppl_vae.

The model and the guide below are written the way Pyro's VAE tutorial writes them: functions that
register their networks with ``pyro.module``, a data site named ``obs``, and no labels in the
signature. ppl_vae trains them with its one ``fit``, evaluates them (the test ELBO and the
importance-sampled log p(x)), and then runs ``compare-estimators`` on a config that names the same
functions by import path (``model: {name: python, target: "examples/pyro_functions.py:model"}``)::

    python examples/pyro_functions.py --epochs 20
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import yaml
from torch import nn

import ppl_vae
from ppl_vae.cli import main as ppl_vae_cli

X_DIM, Z_DIM, HIDDEN = 64, 4, 128  # the 8x8 digits: 64 pixels


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, Z_DIM)
        self.fc22 = nn.Linear(HIDDEN, Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = nn.functional.softplus(self.fc1(x.reshape(-1, X_DIM)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(Z_DIM, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, X_DIM)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z))))


encoder, decoder = Encoder(), Decoder()


def model(x: torch.Tensor) -> None:
    """p(z) p(x|z): z ~ N(0, I), x ~ Bernoulli(decoder(z))."""
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z_loc = x.new_zeros(x.shape[0], Z_DIM)
        z_scale = x.new_ones(x.shape[0], Z_DIM)
        z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
        pyro.sample("obs", dist.Bernoulli(decoder(z), validate_args=False).to_event(1), obs=x.reshape(-1, X_DIM))


def guide(x: torch.Tensor) -> None:
    """q(z|x) = N(encoder(x))."""
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        z_loc, z_scale = encoder(x)
        pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-train", type=int, default=None, help="keep only this many training digits")
    parser.add_argument("--num-samples", type=int, default=500, help="importance samples K for log p(x)")
    parser.add_argument("--estimators", default="trace,iwae:5", help="the estimators to compare")
    parser.add_argument("--out", default=None, help="where the comparison goes (default: a temporary folder)")
    args = parser.parse_args(argv)

    # 1. From Python: the functions go to fit and evaluate as they are.
    data = ppl_vae.load_dataset(ppl_vae.DataConfig(name="digits", num_train=args.num_train))
    train = ppl_vae.TrainConfig(epochs=args.epochs, batch_size=32, val_every=0, progress=False)
    ppl_vae.fit(model, guide, data, optim=ppl_vae.OptimConfig(lr=3e-3), train=train)
    test = ppl_vae.evaluate(model, guide, data.x_test, config=ppl_vae.EvalConfig(num_samples=args.num_samples))
    print(f"tutorial VAE (functions): test ELBO {test.elbo:.2f}, log p(x) {test.log_likelihood:.2f} nats")

    # 2. From a config: the same functions named by import path, compared across estimators.
    here = Path(__file__).resolve()
    config = {
        "data": {"name": "digits", "num_train": args.num_train},
        "model": {"name": "python", "target": f"{here}:model"},
        "guide": {"name": "python", "target": f"{here}:guide"},
        "optim": {"lr": 3e-3},
        "train": {"epochs": args.epochs, "batch_size": 32, "val_every": 0, "progress": False},
    }
    out = Path(args.out or tempfile.mkdtemp(prefix="pyro_functions-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    code = ppl_vae_cli([
        "compare-estimators", str(out / "config.yaml"), "--estimators", args.estimators, "--out", str(out / "compare"),
        "-k", str(args.num_samples), "--eval-points", "200", "--grad-draws", "10",
    ])
    if code != 0:
        raise SystemExit(code)
    return {"elbo": test.elbo, "log_likelihood": test.log_likelihood, "comparison": str(out / "compare" / "comparison.md")}


if __name__ == "__main__":
    main()
