"""The autoencoder family on MNIST: reconstruction error, the model's own measures, and seconds per epoch
against a plain VAE with the same networks.

For each model, one real ``ppl-vae fit`` of its shipped MNIST config at the stated epoch budget, then
``ppl-vae evaluate`` of the run, and the same for its **plain VAE**: the same config with the distinctive part
turned off (no corruption, sparsity, contractive or adversarial term, and a diagonal-Normal guide head instead
of the point mass), so that the networks are the same and the time ratio is the price of the objective. The two
runs of a pair follow each other, so that machine noise hits both.

Reported per model (test set, binarized as ``evaluate`` sees it):

- reconstruction binary cross-entropy (nats per image) and MSE (per pixel), from
  :func:`ppl_vae.inference.reconstruction.reconstruction_error` (the decoder's mean at the guide's code; for the
  plain VAE at one draw of z);
- VQ-VAE: codebook perplexity and dead codes; adversarial autoencoder: MMD² between q(z) and p(z) (the numbers
  ``ppl-vae evaluate`` prints);
- seconds per epoch (median of ``epoch_time_s``) and the plain VAE's, with their ratio.

For the stacked autoencoder, the budget is ``--epochs`` per layer-wise stage and as many of fine-tuning; its
s/epoch is the fine-tuning's (the whole deep autoencoder), and its plain VAE has the deep networks. The VQ-VAE has no plain VAE with the same networks in the library (its decoder reads a grid of code vectors), so
its row has no ratio. The figures each run writes (reconstructions, codebook usage, q(z) against p(z), denoising
grids) are copied next to the table in ``--out``.

Run from the repository root::

    python benchmarks/bench_autoencoders.py --epochs 1 --out bench_out/autoencoders
    python benchmarks/bench_autoencoders.py --models dae aae --epochs 3 --num-train 20000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fit_vs_torch import hardware_info, write_results  # noqa: E402

#: model -> its shipped MNIST config
CONFIGS = {
    "dae": "configs/dae_mnist.yaml",
    "sparse_ae": "configs/sparse_ae_mnist.yaml",
    "contractive_ae": "configs/contractive_ae_mnist.yaml",
    "aae": "configs/aae_mnist.yaml",
    "vqvae": "configs/vqvae_mnist.yaml",
    "stacked_ae": "configs/stacked_ae_mnist.yaml",
}
FIGURES = ("reconstructions.png", "codebook_usage.png", "latent_vs_prior.png", "denoising.png")


def plain_vae(raw: dict) -> dict | None:
    """The same networks trained as a plain VAE (Trace_ELBO, diagonal-Normal head); None for a VQ-VAE."""
    if raw.get("model", {}).get("name") == "vqvae":
        return None
    raw = copy.deepcopy(raw)
    stack = raw.pop("stack", None)
    if stack is not None:  # the deep autoencoder's networks: sigmoid layers of the stack's sizes
        layers = list(stack["layers"])
        nets = {"hidden_dims": layers[:-1], "activation": "sigmoid"}
        raw["model"] = {"name": "vae", "latent_dim": layers[-1], "likelihood": stack.get("likelihood", "bernoulli"), **nets}
        raw["guide"] = {"name": "amortized", **nets}
    for section in ("adversarial", "kl_weighting"):
        raw.pop(section, None)
    guide = raw["guide"]
    if guide["name"] == "amortized":
        guide["head"] = "normal"
        for option in ("corruption", "sparsity", "contractive"):
            guide.pop(option, None)
    else:
        for factor in guide.get("factors", []):
            factor["head"] = "normal"
    raw["estimator"] = {"name": "trace"}
    raw["eval"] = {"num_samples": 1}  # the plain VAE is here for its time per epoch: its ELBO is enough
    return raw


def _run(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def train_and_measure(raw: dict, name: str, args: argparse.Namespace, figures: bool) -> dict:
    """Fit ``raw`` with the CLI into ``--out``/runs/``name``, evaluate it, and measure it."""
    runs = Path(args.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    raw = copy.deepcopy(raw)
    raw.pop("prior", None)  # the VQ-VAE's second stage (its code prior) is not what this table measures
    raw["train"].update(epochs=args.epochs, device="cpu", progress=False, val_every=0)
    raw["data"]["num_train"] = args.num_train
    if "stack" in raw:  # the same budget for every layer-wise stage as for the fine-tuning
        raw["stack"].setdefault("stage", {})["epochs"] = args.epochs
    config = runs / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(runs / name, ignore_errors=True)
    cli = [sys.executable, "-m", "ppl_vae.cli"]
    _run([*cli, "fit", str(config), "--out-dir", str(runs), "--name", name, *(() if figures else ("--no-figures",)),
          *(("--data-dir", args.data_dir) if args.data_dir else ())])
    _run([*cli, "evaluate", str(runs / name), *(("--data-dir", args.data_dir) if args.data_dir else ())])
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((runs / name / "evaluation.json").read_text())
    return {"s_per_epoch": statistics.median(r["epoch_time_s"] for r in rows), "train_loss": rows[-1]["train_loss"],
            "evaluation": evaluation, "reconstruction": reconstruction(runs / name, args.data_dir)}


def reconstruction(run: Path, data_dir: str | None) -> dict:
    """Test-set BCE and MSE of the run's reconstructions."""
    from ppl_vae.experiment import load_run
    from ppl_vae.inference.evaluate import eval_mode
    from ppl_vae.inference.reconstruction import reconstruction_error

    exp = load_run(run, data_dir=data_dir, device="cpu")
    with eval_mode(exp.model, exp.guide):
        return reconstruction_error(exp.model, exp.guide, exp.data.x_test).as_dict()


def extra(evaluation: dict) -> str:
    if "perplexity" in evaluation:
        return f"perplexity {evaluation['perplexity']:.1f} of {evaluation['num_codes']}, {evaluation['dead_codes']} dead codes"
    if "mmd" in evaluation:
        return f"MMD² {evaluation['mmd']:.3f} (bandwidth {evaluation['bandwidth']:g})"
    return ""


def table(rows: list[dict]) -> str:
    lines = ["| model | epochs | test BCE (nats/image) | test MSE (per pixel) | own measure | s/epoch | plain VAE s/epoch | ratio |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        rec, base = r["model_run"]["reconstruction"], r.get("plain_vae")
        b = f"{base['s_per_epoch']:.1f}" if base else "-"
        ratio = f"{r['model_run']['s_per_epoch'] / base['s_per_epoch']:.2f}" if base else "-"
        lines.append(f"| {r['model']} | {r['epochs']} | {rec['bce']:.2f} ± {rec['bce_stderr']:.2f} | {rec['mse']:.4f} | "
                     f"{extra(r['model_run']['evaluation'])} | {r['model_run']['s_per_epoch']:.1f} | {b} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=1, help="epochs of every run (default: 1)")
    p.add_argument("--num-train", type=int, default=None, help="MNIST training points (default: all 60,000)")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-VAE runs")
    p.add_argument("--data-dir", default=os.environ.get("PPL_VAE_DATA"), help="folder holding MNIST/raw (default: $PPL_VAE_DATA)")
    p.add_argument("--out", default="bench_out/autoencoders", help="runs, figures and results.json go here")
    args = p.parse_args(argv)
    info = hardware_info(["cpu"])
    rows = []
    for model in args.models:
        raw = yaml.safe_load((REPO / CONFIGS[model]).read_text())
        row = {"model": model, "epochs": args.epochs, "model_run": train_and_measure(raw, model, args, figures=True)}
        base = None if args.no_baseline else plain_vae(raw)
        if base is not None:
            row["plain_vae"] = train_and_measure(base, f"{model}_plain_vae", args, figures=False)
        for figure in FIGURES:
            source = Path(args.out) / "runs" / model / figure
            if source.exists():
                shutil.copy(source, Path(args.out) / f"{model}_{figure}")
        rows.append(row)
        print(f"  {model}: done", flush=True)
    print(f"MNIST, {args.num_train or 60000} training images, {args.epochs} epoch(s) each; hardware: {info['cpu']} "
          f"({info['cpu_usable']} cores usable), no GPU; torch {info['torch']}, pyro {info['pyro']}")
    print(table(rows))
    return write_results(str(Path(args.out) / "results.json"), {"hardware": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
