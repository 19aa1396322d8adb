"""What the commands do differently for a VQ-VAE: ``evaluate`` reports reconstruction error, code usage
perplexity and dead codes (its guide is deterministic, so an importance-sampled log p(x) means nothing);
``fit`` draws the codebook usage; ``sample`` says its codes are drawn uniformly."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .files import _writing


def is_vqvae_run(exp) -> bool:
    """Whether the experiment is a VQ-VAE (a :class:`~ppl_vae.models.vqvae.VQVAE` with its guide)."""
    from ..inference.codebook import is_vqvae

    return is_vqvae(exp.model, exp.guide)


def sample_note(exp) -> str | None:
    """What to say of a VQ-VAE's samples (None for other models)."""
    return exp.model.sample_note if is_vqvae_run(exp) else None


def codebook_figures(exp, run_path: Path) -> list[Path]:
    """``codebook_usage.png`` in the run directory, for a VQ-VAE run (nothing otherwise)."""
    from ..explore.codebook import codebook_usage

    if not is_vqvae_run(exp):
        return []
    return [codebook_usage(exp, Path(run_path) / "codebook_usage.png").path]


def evaluate_vqvae(args: argparse.Namespace, run, exp, world) -> int:
    """``ppl-vae evaluate`` for a VQ-VAE: reconstruction error, perplexity and dead codes on a split."""
    from ..inference.codebook import codebook_report

    if args.num_samples is not None:
        print("ppl-vae: note: --num-samples is ignored: a VQ-VAE's guide is a point mass, so there is no "
              "importance-sampled log p(x) to estimate", file=sys.stderr)
    if not world.is_main:
        return 0
    x = getattr(exp.data, f"x_{args.split}")[: args.max_points]
    t0 = time.perf_counter()
    report = codebook_report(exp.model, exp.guide, x)
    out = {"split": args.split, **report.as_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    nll = "BCE" if report.likelihood == "bernoulli" else "-log p(x|z)"
    print(f"{args.split} set, {report.num_points} points (VQ-VAE: deterministic codes, no importance-sampled log p(x)):")
    print(f"  reconstruction {nll:12s} {report.recon_nll:10.3f} nats per image")
    print(f"  reconstruction MSE         {report.recon_mse:10.5f} per pixel")
    print(f"  codebook perplexity        {report.perplexity:10.2f} of K = {report.num_codes}")
    print(f"  dead codes                 {report.dead_codes:10d}")
    with _writing(run.path):
        path = run.write_json(run.EVALUATION if args.split == "test" else f"evaluation_{args.split}.json", out)
    print(f"saved {path}")
    return 0


__all__ = ["is_vqvae_run", "sample_note", "codebook_figures", "evaluate_vqvae"]
