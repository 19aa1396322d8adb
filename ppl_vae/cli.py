"""The ``ppl-vae`` command line: fit, evaluate and sample.

Errors caused by input (a bad command line or config, missing data, a corrupted
checkpoint, a full disk or a read-only folder, ...) are printed as one line,
``ppl-vae: error: ...``, with exit status 2. An interrupted fit prints how to
resume and exits with status 130 (Ctrl-C) or 143 (SIGTERM); Ctrl-C before
training starts prints ``ppl-vae: interrupted`` and exits with status 130.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

from . import __version__
from .errors import FitInterrupted, PplVaeError

EXAMPLES = """\
examples:
  ppl-vae fit configs/vae_digits.yaml                      # offline quick start, under a minute
  ppl-vae show configs/specs/m2.yaml                       # sites, shapes and dependencies of a spec
  ppl-vae fit configs/vae_mnist.yaml --data-dir DATA --set train.epochs=5
  ppl-vae fit --resume runs/vae_digits-20261122-101500     # continue an interrupted run
  ppl-vae evaluate runs/vae_digits-20261122-101500 --num-samples 5000
  ppl-vae sample runs/vae_digits-20261122-101500 -n 64
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as the CLI reports every error: one line, exit status 2
    (rather than the usage block and a SystemExit)."""

    def error(self, message: str) -> NoReturn:
        raise PplVaeError(f"{message} (see {self.prog} --help)")


def _device(value: str) -> str:
    """A ``--device`` value, checked as the command line is read (before any data or checkpoint is loaded)."""
    from .inference.training import DEVICES

    if value in DEVICES or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICES)} or cuda:N, got {value!r}")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="folder holding the datasets (default: $PPL_VAE_DATA, else ~/.cache/ppl_vae)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae",
        description="Variational autoencoders as Pyro programs: train, evaluate and sample.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ppl-vae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fit", help="train a model and guide from a YAML config", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (YAML); omit with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override any config value, e.g. --set train.epochs=5, --set model.latents.z.dim=16 (a "
                        "list item by name or index), --set m1.train.epochs=50 (an M1+M2 config's first stage); repeatable")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--out-dir", help="parent folder of the run directory (default: run.out_dir, 'runs')")
    p.add_argument("--name", help="run directory name (default: <config name>-<timestamp>)")
    _add_data_dir(p)
    p.add_argument("--no-figures", action="store_true", help="skip the sample and learning-curve PNGs after training")

    p = sub.add_parser("show", help="print a config's compiled model and guide: sites, shapes, dependencies")
    p.add_argument("config", help="experiment config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override any config value, e.g. model.latents.z.dim=16 (repeatable)")
    p.add_argument("--graph", default="model.png", help="where to draw the model graph when graphviz is installed (default: model.png)")
    _add_data_dir(p)

    for kind, flag, example in (
        ("estimators", "--estimators", "trace,tracegraph:avg,tracegraph:nn,enum,iwae:5"),
        ("guides", "--heads", "normal,fullcov,iaf:4,planar:8 (or a guide by import path, my_models:guide)"),
    ):
        p = sub.add_parser(f"compare-{kind}", help=f"train one config with several {kind} side by side")
        p.add_argument("config", help="experiment config (YAML)")
        p.add_argument(flag, dest="variants", required=True, help=f"comma-separated list, e.g. {example}")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a config value for every variant (repeatable)")
        p.add_argument("--out", help="output folder (default: runs/compare-<kind>-<config>-<timestamp>); "
                       "rerun with the same folder to continue an interrupted comparison")
        p.add_argument("--num-samples", "-k", type=int, default=1000, help="importance samples K for log p(x) (default: 1000)")
        p.add_argument("--eval-points", type=int, default=1000, help="test points to evaluate (default: 1000; 0 = all)")
        if kind == "estimators":
            p.add_argument("--grad-draws", type=int, default=50, help="gradient draws per variance measurement (default: 50)")
        _add_data_dir(p)

    p = sub.add_parser("evaluate", help="test ELBO and importance-sampled log p(x) of a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num-samples", "-k", type=int, help="importance samples K per data point (default: eval.num_samples)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="which split (default: test)")
    p.add_argument("--max-points", type=int, help="evaluate only the first N points of the split")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    _add_data_dir(p)

    p = sub.add_parser("sample", help="PNG grids of samples and of test-set reconstructions")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: 0)")
    p.add_argument("--out", help="samples PNG (default: RUN_DIR/samples.png); reconstructions go beside it")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    _add_data_dir(p)
    return parser


def _new_run(args: argparse.Namespace, config):
    """The path of a new run directory (not created: fit creates it once everything has been checked)."""
    from .runs import RunDir

    root = Path(args.out_dir or config.run.out_dir)
    base = args.name or config.run.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    return RunDir(path)


def _open_run(path: str):
    """An existing run directory, its ``config.yaml`` checked to read as a config mapping (a damaged one is
    one line naming it, before anything else reads it)."""
    from .config import read_yaml
    from .runs import RunDir

    run = RunDir.open(path)
    if run.config_path.is_file():
        read_yaml(run.config_path)
    return run


#: the errors of a write that a user can act on, and how to say them
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for its file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _failed_write(err: BaseException) -> OSError | None:
    """The OSError of a failed write behind ``err``: itself, or one it was raised from (torch.save reports a
    full disk as a RuntimeError raised while handling the OSError of its file's write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and not isinstance(err, BrokenPipeError) and err.errno in _WRITE_ERRORS:
            return err
        err = err.__cause__ or err.__context__
    return None


def _write_error(err: OSError, where: Path) -> str:
    """One line for a failed write: what happened, and where (the file, else the folder being written)."""
    if not isinstance(err.filename, (str, bytes, os.PathLike)):
        return f"{_WRITE_ERRORS[err.errno]}: cannot write in {where}"
    target = Path(os.fsdecode(err.filename))
    if target.name.startswith(".") and ".tmp-" in target.name:  # an atomic write's temporary file
        target = target.with_name(target.name[1 : target.name.index(".tmp-")])
    return f"{_WRITE_ERRORS[err.errno]}: cannot write {target}"


@contextmanager
def _writing(where: Path, run=None) -> Iterator[None]:
    """Turn a failed write under ``where`` (a full disk, a read-only folder) into one line; for a fit, say
    that the run's last checkpoint (written atomically, so never half-written) is kept."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        failed = _failed_write(err)
        if failed is None:
            raise
        message = _write_error(failed, where)
        if run is not None and run.path.is_dir() and any(run.path.rglob(run.CHECKPOINT)):
            message += f"; its last checkpoint is kept: once it can be written, resume with: ppl-vae fit --resume {run.path}"
        raise PplVaeError(message) from None


def _check_writable(path: Path) -> None:
    """Refuse up front a folder that the command could not write into (its nearest existing folder, for one
    still to be made), before any data is loaded or anything computed; a write that fails later (a full disk)
    is reported by :func:`_writing`."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PplVaeError(f"cannot write in {existing}: it is read-only, or not writable for this user")


def _discard_unstarted(run, made_parent: bool) -> None:
    """Remove a new run's directory when the fit stopped before its first checkpoint (nothing to resume),
    and its parent folder when the fit made that too and it is left empty."""
    if run.path.is_dir() and not any(run.path.rglob(run.CHECKPOINT)):
        shutil.rmtree(run.path, ignore_errors=True)
    if made_parent and run.path.parent.is_dir() and not any(run.path.parent.iterdir()):
        with suppress(OSError):
            run.path.parent.rmdir()


def _cmd_fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import fit_experiment, resume_experiment
    from .plots import plot_learning_curves

    if args.resume:
        if args.config:
            print("ppl-vae: note: --resume uses the run's own config.yaml; the CONFIG argument is ignored", file=sys.stderr)
        run = _open_run(args.resume)
        _check_writable(run.path)
        print(f"resuming {run.path}")
        with _writing(run.path, run):
            exp, result = resume_experiment(run, args.overrides, data_dir=args.data_dir)
    else:
        if not args.config:
            raise PplVaeError("fit needs a CONFIG.yaml (or --resume RUN_DIR)")
        config = load_config(args.config, args.overrides)
        run = _new_run(args, config)
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .contract import Classifier, capability
    from .experiment import conditioning_labels, load_run
    from .inference.evaluate import evaluate
    from .inference.semisup import classification_accuracy

    for flag, value in (("--num-samples", args.num_samples), ("--max-points", args.max_points)):
        if value is not None and value < 1:
            raise PplVaeError(f"{flag} must be a positive int, got {value}")
    run = _open_run(args.run_dir)
    _check_writable(run.path)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    config = exp.config.eval if args.num_samples is None else replace(exp.config.eval, num_samples=args.num_samples)
    x = getattr(exp.data, f"x_{args.split}")[: args.max_points]
    labels = getattr(exp.data, f"y_{args.split}")
    labels = None if labels is None else labels[: args.max_points]
    t0 = time.perf_counter()
    result = evaluate(exp.model, exp.guide, x, conditioning_labels(exp.model, labels), config, progress=True)
    out = {"split": args.split, **result.as_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    print(f"{args.split} set, {result.num_points} points, K={result.num_samples}:")
    print(f"  ELBO                   {result.elbo:10.3f} +- {result.elbo_stderr:.3f} nats")
    print(f"  log p(x) (importance)  {result.log_likelihood:10.3f} +- {result.log_likelihood_stderr:.3f} nats")
    if capability(exp.guide, Classifier) is not None and labels is not None and args.split != "train":
        out["accuracy"] = classification_accuracy(exp.guide, x, labels)
        print(f"  classification error   {100 * (1 - out['accuracy']):9.2f} %  (argmax of q(y|x))")
    with _writing(run.path):
        path = run.write_json(run.EVALUATION if args.split == "test" else f"evaluation_{args.split}.json", out)
    print(f"saved {path}")
    return 0


def write_sample_figures(exp, out: Path, num_samples: int = 64, seed: int = 0) -> list[Path]:
    """The run's figures beside ``out`` (see :func:`ppl_vae.plots.run_figures`); prints why any were skipped."""
    from .plots import run_figures

    figures = run_figures(exp, out, num_samples, seed)
    for reason in figures.skipped:
        print(f"(skipped: {reason})")
    return figures.paths


def _cmd_sample(args: argparse.Namespace) -> int:
    from .experiment import load_run

    if args.num_samples < 1:
        raise PplVaeError(f"-n must be a positive int, got {args.num_samples}")
    run = _open_run(args.run_dir)
    out = Path(args.out) if args.out else run.path / "samples.png"
    _check_writable(out.parent)
    exp = load_run(run, data_dir=args.data_dir, device=args.device)
    with _writing(out.parent):  # the folder of --out is created when missing
        for path in write_sample_figures(exp, out, args.num_samples, args.seed):
            print(f"saved {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import build_experiment
    from .show import describe, estimator_report, render_graph
    from .stages import stage_config

    config = load_config(args.config, args.overrides)
    m1 = None
    if config.m1 is not None:
        # The M2 stage's shapes only: an untrained M1 gives codes of the right size.
        print("(M1+M2: showing the M2 stage, on the codes of an untrained M1; ppl-vae fit trains both)")
        m1 = build_experiment(stage_config(config), args.data_dir)
    exp = build_experiment(config, args.data_dir, m1=m1)
    x, y = exp.data.head(4)
    print(f"{args.config}: model {config.model.name!r}, guide {config.guide.name!r}, data {config.data.name!r} "
          f"(items of shape {tuple(exp.data.x_shape)}), estimator {config.estimator.name!r}")
    n_model = sum(p.numel() for p in exp.model.parameters())
    n_guide = sum(p.numel() for p in exp.guide.parameters())
    print(f"parameters: model {n_model:,}, guide {n_guide:,}\n")
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
    from .compare import CompareConfig, compare_estimators, compare_guides
    from .config import load_config

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


class _PrintHandler(logging.Handler):
    """Prints the library's progress messages (the ``ppl_vae`` logger) as plain lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record))


def _log_to_stdout() -> None:
    logger = logging.getLogger("ppl_vae")
    if not any(isinstance(h, _PrintHandler) for h in logger.handlers):
        logger.addHandler(_PrintHandler())
    logger.setLevel(logging.INFO)


COMMANDS = {"fit": _cmd_fit, "compare-estimators": _cmd_compare, "compare-guides": _cmd_compare, "show": _cmd_show, "evaluate": _cmd_evaluate, "sample": _cmd_sample}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ppl-vae``; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        _log_to_stdout()
        return COMMANDS[args.command](args)
    except FitInterrupted as err:  # a checkpoint was written: the message says how to resume
        print(f"\nppl-vae: {err}", file=sys.stderr)
        signum = getattr(err, "signal", None)
        return 128 + int(signum) if signum else 130  # 143 for SIGTERM, as the shell reports a process it ended
    except KeyboardInterrupt:  # Ctrl-C outside training (imports, data loading): nothing was started
        print("\nppl-vae: interrupted", file=sys.stderr)
        return 130
    except PplVaeError as err:
        print(f"ppl-vae: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, RuntimeError) as err:  # a failed write that no command wrapped (see _writing)
        failed = _failed_write(err)
        if failed is None:
            raise
        print(f"ppl-vae: error: {_write_error(failed, Path.cwd())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
