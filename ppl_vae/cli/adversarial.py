"""The adversarial autoencoder's part of ``ppl-vae evaluate`` and ``fit``: reconstruction and MMD, and the q(z)/p(z) figure."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .files import _writing


def is_adversarial(exp) -> bool:
    """Whether the run was trained with the ``adversarial:`` objective."""
    return getattr(exp.config, "adversarial", None) is not None


def evaluate_adversarial(args: argparse.Namespace, run, exp, world) -> int:
    """Reconstruction (-log p(x|z), z from the encoder) and the MMD between held-out codes and prior draws.

    An adversarial autoencoder is not trained on a bound and its encoder is usually a point mass, so the
    importance-sampled log p(x) is not reported.
    """
    from ..explore.adversarial import latent_vs_prior

    if not world.is_main:
        return 0  # one process computes it (an adversarial run is not trained under torchrun either)
    print("adversarial autoencoder: no ELBO or importance-sampled log p(x) (the encoder is not trained on a bound); "
          "reporting reconstruction and MMD")
    t0 = time.perf_counter()
    match = latent_vs_prior(exp, args.max_points, split=args.split)
    out = {"split": args.split, **match.as_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    print(f"{args.split} set, {match.num_points} points:")
    print(f"  reconstruction -log p(x|z)  {match.reconstruction:10.3f} nats/point")
    print(f"  MMD^2(q(z), p(z))           {match.mmd:10.4f}  (Gaussian kernel, bandwidth {match.bandwidth:g}, "
          f"{match.mmd_points} codes and prior draws)")
    with _writing(run.path):
        path = run.write_json(run.EVALUATION if args.split == "test" else f"evaluation_{args.split}.json", out)
    print(f"saved {path}")
    return 0


def adversarial_figures(exp, run_path: Path) -> list[Path]:
    """``latent_vs_prior.png`` for an adversarial run with a 2-D code; prints why it is skipped otherwise."""
    from ..explore.adversarial import LATENT_FIGURE, plot_latent_vs_prior

    if not is_adversarial(exp):
        return []
    path = plot_latent_vs_prior(exp, run_path / LATENT_FIGURE)
    if path is None:
        print(f"(skipped {LATENT_FIGURE}: the code is not 2-D)")
        return []
    return [path]
