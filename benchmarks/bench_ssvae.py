"""Semi-supervised MNIST with 100 labels: M2 (three ways to handle the unlabelled class) and M1+M2.

Variants, all from the shipped configs and all on the same budget (``--epochs``):

* ``enum``: ``configs/ssvae_mnist_100.yaml``: y enumerated exactly (TraceEnum_ELBO) + auxiliary loss;
* ``reinforce``: the same config with ``estimator.name=tracegraph``, ``estimator.baseline=nn``
  (score function with a neural baseline);
* ``relaxed``: ``configs/ssvae_mnist_100_relaxed.yaml`` (Gumbel-softmax, estimator ``trace``);
* ``m1m2``: ``configs/m1m2_mnist_100.yaml`` (its M1 stage keeps its own epochs).

Each variant is trained with ``ppl_vae.experiment.fit_experiment`` into ``OUT/<variant>``
(an interrupted benchmark resumes there). The table reports the test error of q(y|x) after
the last epoch, the test error at the epoch with the best *validation* accuracy (model
selection on held-out labelled data, never on the test set), the wall time, and the hardware.

Run from the repository root::

    python benchmarks/bench_ssvae.py --data-dir /work/shared/data --epochs 40
    python benchmarks/bench_ssvae.py --variants enum --epochs 1 --num-labels 100   # quick look
    python benchmarks/bench_ssvae.py --variants m1m2 --epochs 1 --set m1.train.epochs=1 --set data.num_train=2000
    python benchmarks/bench_ssvae.py --summarize runs/bench_ssvae/enum ...          # table of finished runs
    python benchmarks/bench_ssvae.py --epochs 20 --set "kl_weighting.sites=[z]" --set kl_weighting.beta=2
    python benchmarks/bench_ssvae.py --baselines --m1-run runs/bench_ssvae/m1m2/m1     # the labels alone

References

- Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-Supervised Learning
  with Deep Generative Models. NeurIPS. (M2: 11.97% test error with 100 labels; M1+M2: 3.33%.)
"""

from __future__ import annotations

import argparse
import logging
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit_vs_torch import hardware_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "enum": ("ssvae_mnist_{n}.yaml", []),
    "reinforce": ("ssvae_mnist_{n}.yaml", ["estimator.name=tracegraph", "estimator.baseline=nn"]),
    "relaxed": ("ssvae_mnist_100_relaxed.yaml", []),
    "m1m2": ("m1m2_mnist_{n}.yaml", []),
}


def summarize(run_path: Path, label: Optional[str] = None, at_epoch: Optional[int] = None) -> dict:
    """Test error after the last epoch (or epoch ``at_epoch``) and at the best-validation epoch up to it."""
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if at_epoch is not None:
        if not rows or rows[-1]["epoch"] < at_epoch:
            raise SystemExit(f"{run_path} has not reached epoch {at_epoch}")
        rows = [r for r in rows if r["epoch"] <= at_epoch]
    if not rows or "test_accuracy" not in rows[-1]:
        raise SystemExit(f"{run_path} has no test accuracy in its metrics; is it a semi-supervised run?")
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    m1_rows = []
    if (run_path / "m1" / "metrics.jsonl").is_file():
        m1_rows = [json.loads(line) for line in (run_path / "m1" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = sum(r["epoch_time_s"] for r in rows) + sum(r["epoch_time_s"] for r in m1_rows)
    return {
        "variant": label or run_path.name,
        "epochs": rows[-1]["epoch"],
        "m1_epochs": m1_rows[-1]["epoch"] if m1_rows else None,
        "final_test_error": 1 - rows[-1]["test_accuracy"],
        "best_val_epoch": best["epoch"],
        "test_error_at_best_val": 1 - best["test_accuracy"],
        "final_val_elbo": rows[-1].get("val_elbo"),
        "train_s": train_s,
        "s_per_epoch": sum(r["epoch_time_s"] for r in rows) / len(rows),
    }


def labels_only_baselines(num_labels: int, data_dir: Optional[str], m1_run: Optional[str] = None) -> list[dict]:
    """Test error of classifiers fitted to the labelled points alone: what the unlabelled data must beat.

    Logistic regression and 1-nearest-neighbour (scikit-learn) on the same balanced, seeded labels as the
    M2 runs: on the images (one fixed binary draw, as the test images), and, with ``m1_run``, on the
    codes of that trained M1 stage (``RUN/m1`` of an M1+M2 run).
    """
    from dataclasses import replace

    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from ppl_vae.config import load_config
    from ppl_vae.data import load_dataset
    from ppl_vae.experiment import load_run
    from ppl_vae.labelled import hide_labels
    from ppl_vae.stages import m1_features

    config = load_config(ROOT / "configs" / f"m1m2_mnist_{num_labels}.yaml")
    images = load_dataset(config.data, data_dir)
    inputs = [("images", images)]
    if m1_run:
        m1 = load_run(m1_run, data_dir=data_dir, device="cpu", config=replace(config.m1, data=config.data))
        inputs.append(("M1 codes", m1_features(m1.guide, m1.data, images)))
    rows = []
    for name, data in inputs:
        kept = hide_labels(data, num_labels, config.semi_supervised.seed).y_train >= 0
        x = data.fixed_train_x()[kept]
        for clf in (LogisticRegression(max_iter=2000), KNeighborsClassifier(n_neighbors=1)):
            clf.fit(x.numpy(), data.y_train[kept].numpy())
            error = 1 - clf.score(data.x_test.numpy(), data.y_test.numpy())
            rows.append({"inputs": name, "classifier": type(clf).__name__, "test_error": error})
    return rows


def table(results: Sequence[dict]) -> str:
    lines = [
        "| variant | epochs | test error, last epoch | test error at best val epoch (epoch) | training time | s/epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        epochs = f"{r['epochs']}" + (f" (+{r['m1_epochs']} M1)" if r["m1_epochs"] else "")
        lines.append(
            f"| {r['variant']} | {epochs} | {100 * r['final_test_error']:.2f}% | "
            f"{100 * r['test_error_at_best_val']:.2f}% ({r['best_val_epoch']}) | {r['train_s'] / 60:.1f} min | {r['s_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # ppl_vae's progress lines (M1+M2 stages)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=40, help="M2 epochs of every variant (the M1 stage keeps its own)")
    parser.add_argument("--num-labels", type=int, default=100, choices=(100, 600, 1000, 3000))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench_ssvae", help="folder of the runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value in every variant, e.g. --set kl_weighting.beta=2 (repeatable)",
    )
    parser.add_argument(
        "--baselines", action="store_true",
        help="only fit classifiers to the labelled points alone (logistic regression, 1-NN), on the images "
        "and, with --m1-run, on M1's codes",
    )
    parser.add_argument("--m1-run", default=None, help="with --baselines: a trained M1 stage (RUN/m1 of an M1+M2 run)")
    parser.add_argument("--summarize", nargs="+", metavar="RUN_DIR", help="only tabulate finished runs")
    parser.add_argument("--at-epoch", type=int, default=None, help="with --summarize: as after this epoch (same budget)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.baselines:
        for row in labels_only_baselines(args.num_labels, args.data_dir, args.m1_run):
            print(f"{row['inputs']:>9} {row['classifier']:>20}: test error {100 * row['test_error']:.2f}%")
        return 0
    if args.summarize:
        results = [summarize(Path(p), at_epoch=args.at_epoch) for p in args.summarize]
    else:
        from ppl_vae.config import load_config
        from ppl_vae.experiment import fit_experiment
        from ppl_vae.runs import RunDir

        results = []
        for name in args.variants:
            file, overrides = VARIANTS[name]
            if name == "relaxed" and args.num_labels != 100:
                print("skipping relaxed: it ships for 100 labels only")
                continue
            overrides = overrides + args.overrides
            config = load_config(ROOT / "configs" / file.format(n=args.num_labels), overrides + [f"train.epochs={args.epochs}"])
            path = Path(args.out) / name
            path.mkdir(parents=True, exist_ok=True)
            run = RunDir(path)
            print(f"== {name}: {file.format(n=args.num_labels)} {' '.join(overrides)} -> {path}")
            t0 = time.perf_counter()
            fit_experiment(config, run, data_dir=args.data_dir, resume=True)  # continues whatever stage was interrupted
            print(f"   wall {time.perf_counter() - t0:.0f} s")
            results.append(summarize(path, name))
    info = hardware_info(["cpu"])
    print(f"hardware: {info['cpu']}, {info['cpu_usable']} usable cores, torch {info['torch']}, {info['torch_threads']} threads")
    print(table(results))
    if not args.summarize:
        (Path(args.out) / "results.json").write_text(json.dumps({"hardware": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
