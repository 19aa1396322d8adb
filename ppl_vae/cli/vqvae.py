"""What the commands do differently for a VQ-VAE: ``evaluate`` reports reconstruction error, code usage
perplexity and dead codes (its guide is deterministic, so an importance-sampled log p(x) means nothing);
``fit`` draws the codebook usage; ``sample`` says where its codes come from: uniform, or the learned PixelCNN
prior that ``ppl-vae fit-prior`` trains in ``RUN/prior`` (``evaluate`` then adds its bits per dimension)."""

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


def attach_code_prior(exp, run_path: Path) -> bool:
    """Give a VQ-VAE run's model the learned prior saved in ``RUN/prior`` (if any); whether it had one."""
    from ..inference.code_prior import load_code_prior

    if not is_vqvae_run(exp):
        return False
    prior = load_code_prior(run_path, device=exp.model.codebook.device)
    exp.model.set_code_prior(prior)
    return prior is not None


def _prior_lines(exp, x) -> dict:
    """The learned prior's bits per dimension on the codes of ``x`` (empty without a prior)."""
    import math

    from ..inference.code_prior import code_prior_bpd, encode_codes

    prior = exp.model.code_prior
    if prior is None:
        return {}
    bpd = code_prior_bpd(prior, encode_codes(exp.guide, x))
    print(f"  code prior (PixelCNN)      {bpd:10.4f} bits per code (uniform: log2 K = {math.log2(prior.num_codes):.4f})")
    return {"prior_bits_per_dim": bpd}


def fit_prior(args: argparse.Namespace) -> int:
    """``ppl-vae fit-prior RUN``: train a PixelCNN prior on a trained VQ-VAE's codes, saved in ``RUN/prior``."""
    from dataclasses import fields

    from ..errors import PplVaeError
    from ..experiment import load_run
    from ..inference.code_prior import PRIOR_DIR, fit_code_prior
    from ..models.code_prior import CodePriorConfig
    from .files import _check_writable, _open_run

    settings = {f.name: getattr(args, f.name) for f in fields(CodePriorConfig) if getattr(args, f.name, None) is not None}
    try:
        config = CodePriorConfig(**settings)
    except ValueError as err:  # a bad option is refused before anything is loaded or written
        raise PplVaeError(f"fit-prior: {err}") from None
    run = _open_run(args.run_dir)
    _check_writable(run.path)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    if not is_vqvae_run(exp):
        raise PplVaeError(f"fit-prior needs a VQ-VAE run (model.name: vqvae), {run.path} is not one")
    t0 = time.perf_counter()
    with _writing(run.path):
        _, metrics = fit_code_prior(exp.model, exp.guide, exp.data, config, run_dir=run,
                                    source={"vqvae_epochs": exp.config.train.epochs})
    val = f", validation {metrics['val_bpd']:.4f}" if "val_bpd" in metrics else ""
    print(f"code prior: training {metrics['train_bpd'][-1]:.4f} bits per code{val} (uniform {metrics['uniform_bpd']:.4f}), "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"saved {run.path / PRIOR_DIR}")
    return 0


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
    attach_code_prior(exp, run.path)
    out.update(_prior_lines(exp, x))
    with _writing(run.path):
        path = run.write_json(run.EVALUATION if args.split == "test" else f"evaluation_{args.split}.json", out)
    print(f"saved {path}")
    return 0


__all__ = ["is_vqvae_run", "sample_note", "attach_code_prior", "fit_prior", "codebook_figures", "evaluate_vqvae"]
