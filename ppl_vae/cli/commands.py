"""The commands that train, evaluate, sample, describe and compare: ``fit``, ``evaluate``, ``sample``, ``show``, ``compare-*``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import FitInterrupted, PplVaeError

from .adversarial import adversarial_figures, evaluate_adversarial, is_adversarial
from .files import _check_writable, _discard_unstarted, _new_run, _open_run, _writing
from .vqvae import attach_code_prior, codebook_figures, evaluate_vqvae, is_vqvae_run, sample_note


def _cmd_fit(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment import fit_experiment, resume_experiment
    from ..explore.denoising import plot_denoising
    from ..plots import plot_learning_curves

    if args.resume:
        run = _open_run(args.resume)
        if not _join_world(run=run, overrides=args.overrides).is_main:
            return _fit_other_rank(args, run)
        if args.config:
            print("ppl-vae: note: --resume uses the run's own config.yaml; the CONFIG argument is ignored", file=sys.stderr)
        _check_writable(run.path)
        print(f"resuming {run.path}")
        with _writing(run.path, run):
            exp, result = resume_experiment(run, args.overrides, data_dir=args.data_dir)
    else:
        if not args.config:
            raise PplVaeError("fit needs a CONFIG.yaml (or --resume RUN_DIR)")
        config = load_config(args.config, args.overrides)
        world = _join_world(config=config)
        run = _new_run(args, config, world)
        if not world.is_main:
            return _fit_other_rank(args, run, config)
        _check_writable(run.path)
        made_parent = not run.path.parent.exists()
        print(f"run directory: {run.path}")
        try:
            with _writing(run.path, run):
                exp, result = fit_experiment(config, run, data_dir=args.data_dir)
        except (PplVaeError, KeyboardInterrupt) as err:
            if not isinstance(err, FitInterrupted):  # an interrupted fit wrote a checkpoint to resume from
                _discard_unstarted(run, made_parent)  # refused, failed or interrupted before training: leave nothing behind
            raise
    if not args.no_figures:
        with _writing(run.path):
            for path in write_sample_figures(exp, run.path / "samples.png"):
                print(f"saved {path}")
            if (path := plot_denoising(exp, run.path / "denoising.png")) is not None:
                print(f"saved {path}")
            for path in codebook_figures(exp, run.path):  # a VQ-VAE's codebook usage
                print(f"saved {path}")
            for path in adversarial_figures(exp, run.path):  # an adversarial autoencoder's q(z) over p(z)
                print(f"saved {path}")
            metrics = run.read_metrics()
            if metrics:
                plot_learning_curves(metrics, run.path / "curves.png")
    last = result.history[-1] if result.history else (run.read_metrics() or [{}])[-1]
    line = f"done: {result.epochs_done} epochs on {result.device}"
    if "train_loss" in last:
        line += f", train loss {last['train_loss']:.3f} nats/point"
    if "val_elbo" in last:
        line += f", val ELBO {last['val_elbo']:.3f}"
    print(line)
    print(f"next: ppl-vae evaluate {run.path}   |   ppl-vae sample {run.path}")
    return 0


def _join_world(*, config=None, run=None, overrides=(), device=None):
    """Join the process group of a ``torchrun`` launch (see :mod:`ppl_vae.inference.distributed`); one process
    outside ``torchrun``. The backend follows ``device``, else the config's ``train.device``."""
    from ..config import override_config
    from ..inference.distributed import SINGLE, env_world, init_distributed

    if not env_world().distributed:
        return SINGLE
    if device is None and config is None:
        config = override_config(run.read_config(), [o for o in overrides if o.startswith("train.")])
    return init_distributed(device or config.train.device)


def _fit_other_rank(args: argparse.Namespace, run, config=None) -> int:
    """A rank other than 0 of a data-parallel fit: train its shards; rank 0 writes the run and prints."""
    from ..experiment import fit_experiment, resume_experiment

    if args.resume:
        resume_experiment(run, args.overrides, data_dir=args.data_dir)
    else:
        fit_experiment(config, run, data_dir=args.data_dir)
    return 0


#: points on which ``evaluate`` measures KL per dimension and active units (the first ones of the split)
USAGE_POINTS = 1000


def _print_latent_usage(exp, x, labels) -> dict:
    """KL per latent dimension and active units on the first :data:`USAGE_POINTS` points (a decoder that
    ignores z, as a strong autoregressive one can, shows as KL near 0 and no active unit)."""
    from ..compare import latent_usage

    n = min(len(x), USAGE_POINTS)
    usage = latent_usage(exp.model, exp.guide, x[:n], None if labels is None else labels[:n])
    print(f"  KL per dimension       {usage['kl_per_dim']:10.3f} nats  (first {n} points)")
    print(f"  active units           {usage['active_units']:10d}      (variance of E_q[z|x] over points > 0.01)")
    return {"kl_per_dim": usage["kl_per_dim"], "active_units": usage["active_units"], "usage_points": n}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..contract import Classifier, capability
    from ..experiment import conditioning_labels, load_run
    from ..inference.evaluate import evaluate
    from ..inference.semisup import classification_accuracy

    for flag, value in (("--num-samples", args.num_samples), ("--max-points", args.max_points)):
        if value is not None and value < 1:
            raise PplVaeError(f"{flag} must be a positive int, got {value}")
    run = _open_run(args.run_dir)
    world = _join_world(run=run, device=args.device)  # under torchrun, the batches are shared out
    if world.is_main:
        _check_writable(run.path)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    if is_adversarial(exp):  # reconstruction and the MMD between q(z) and p(z) instead of log p(x)
        return evaluate_adversarial(args, run, exp, world)
    if is_vqvae_run(exp):  # a point-mass guide: reconstruction, perplexity and dead codes instead of log p(x)
        return evaluate_vqvae(args, run, exp, world)
    config = exp.config.eval if args.num_samples is None else replace(exp.config.eval, num_samples=args.num_samples)
    x = getattr(exp.data, f"x_{args.split}")[: args.max_points]
    labels = getattr(exp.data, f"y_{args.split}")
    labels = None if labels is None else labels[: args.max_points]
    t0 = time.perf_counter()
    result = evaluate(exp.model, exp.guide, x, conditioning_labels(exp.model, labels), config, progress=True)
    if not world.is_main:
        return 0
    out = {"split": args.split, **result.as_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    if result.reconstruction is not None:
        _print_reconstruction(args.split, result)
    else:
        print(f"{args.split} set, {result.num_points} points, K={result.num_samples}:")
        print(f"  ELBO                   {result.elbo:10.3f} +- {result.elbo_stderr:.3f} nats")
        print(f"  log p(x) (importance)  {result.log_likelihood:10.3f} +- {result.log_likelihood_stderr:.3f} nats")
        out.update(_print_latent_usage(exp, x, conditioning_labels(exp.model, labels)))
    if capability(exp.guide, Classifier) is not None and labels is not None and args.split != "train":
        out["accuracy"] = classification_accuracy(exp.guide, x, labels)
        print(f"  classification error   {100 * (1 - out['accuracy']):9.2f} %  (argmax of q(y|x))")
    with _writing(run.path):
        path = run.write_json(run.EVALUATION if args.split == "test" else f"evaluation_{args.split}.json", out)
    print(f"saved {path}")
    return 0


def _print_reconstruction(split: str, result) -> None:
    """A point-mass guide's evaluation: the bound at the code and the reconstruction error, no log p(x)."""
    from ..inference.reconstruction import POINT_MASS_REASON

    rec = result.reconstruction
    print(f"({POINT_MASS_REASON})")
    print(f"{split} set, {result.num_points} points:")
    print(f"  log p(x|f(x)) + log p(f(x))  {result.elbo:10.3f} +- {result.elbo_stderr:.3f} nats")
    if rec.bce is not None:
        print(f"  reconstruction BCE           {rec.bce:10.3f} +- {rec.bce_stderr:.3f} nats/image")
    print(f"  reconstruction MSE           {rec.mse:10.5f} +- {rec.mse_stderr:.5f} per pixel")


def write_sample_figures(exp, out: Path, num_samples: int = 64, seed: int = 0) -> list[Path]:
    """The run's figures beside ``out`` (see :func:`ppl_vae.plots.run_figures`); prints why any were skipped."""
    from ..plots import run_figures

    figures = run_figures(exp, out, num_samples, seed)
    note = sample_note(exp)
    if note:
        print(f"samples: {note}")
    for reason in figures.skipped:
        print(f"(skipped: {reason})")
    return figures.paths


def _cmd_sample(args: argparse.Namespace) -> int:
    from ..experiment import load_run

    if args.num_samples < 1:
        raise PplVaeError(f"-n must be a positive int, got {args.num_samples}")
    run = _open_run(args.run_dir)
    out = Path(args.out) if args.out else run.path / "samples.png"
    _check_writable(out.parent)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    attach_code_prior(exp, run.path)  # a VQ-VAE with RUN/prior samples its codes from the learned prior
    with _writing(out.parent):  # the folder of --out is created when missing
        for path in write_sample_figures(exp, out, args.num_samples, args.seed):
            print(f"saved {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment import build_experiment
    from ..show import describe, estimator_report, render_graph
    from ..stages import stage_config

    config = load_config(args.config, args.overrides)
    m1 = None
    if config.m1 is not None:
        # The M2 stage's shapes only: an untrained M1 gives codes of the right size.
        print("(M1+M2: showing the M2 stage, on the codes of an untrained M1; ppl-vae fit trains both)")
        m1 = build_experiment(stage_config(config), args.data_dir)
    if config.stack is not None:
        print(f"(stacked autoencoder: {len(config.stack.layers)} layer-wise stages, codes of sizes {list(config.stack.layers)}, "
              "then the deep model below, started from their weights and fine-tuned; ppl-vae fit trains all)")
    exp = build_experiment(config, args.data_dir, m1=m1)
    x, y = exp.data.head(4)
    print(f"{args.config}: model {config.model.name!r}, guide {config.guide.name!r}, data {config.data.name!r} "
          f"(items of shape {tuple(exp.data.x_shape)}), estimator {config.estimator.name!r}")
    n_model = sum(p.numel() for p in exp.model.parameters())
    n_guide = sum(p.numel() for p in exp.guide.parameters())
    print(f"parameters: model {n_model:,}, guide {n_guide:,}\n")
    if is_adversarial(exp):
        print("objective: adversarial autoencoder (the adversarial: section replaces the estimator in training)\n")
    print(describe(exp.model, exp.guide, x, y))
    print("\nEstimators (what fit would accept):")
    for name, refusal in estimator_report(exp.model, exp.guide, x[:2], None if y is None else y[:2]).items():
        mark = "*" if name == config.estimator.name else " "
        print(f" {mark}{name:15s} {'ok' if refusal is None else 'refused: ' + refusal.split('. ')[0]}")
    with _writing(Path(args.graph).parent):
        graph = render_graph(exp.model, x, y, args.graph)
    if graph is None:
        print("\n(graphviz is not installed, so no graph picture was drawn; the tables above show the structure)")
    else:
        print(f"\nsaved the model graph to {graph}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import CompareConfig, compare_estimators, compare_guides
    from ..config import load_config

    kind = args.command.split("-", 1)[1]
    config = load_config(args.config, args.overrides)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise PplVaeError(f"compare-{kind} needs at least one {kind[:-1]}")
    out = args.out or Path(config.run.out_dir) / f"compare-{kind}-{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        compare = CompareConfig(
            num_eval_points=args.eval_points or None,
            num_samples=args.num_samples,
            grad_draws=getattr(args, "grad_draws", 50),
        )
    except ValueError as err:
        raise PplVaeError(str(err)) from None
    run = compare_estimators if kind == "estimators" else compare_guides
    with _writing(Path(out)):
        rows, paths = run(config, variants, out, compare, data_dir=args.data_dir)
    print()
    print(paths["md"].read_text())
    print(f"saved {paths['md']}, {paths['csv']}, {paths['png']}")
    return 0
