"""PixelVAE against the MLP-decoder VAE on statically binarized MNIST, at the same epoch budget.

Two real ``ppl-vae fit`` runs: ``configs/pixelvae_bmnist.yaml`` as shipped (an MLP encoder, z of 32 dimensions,
p(x|z) a gated PixelCNN conditioned on a conv decoder's map of z, free bits), and **the same config with an MLP
decoder** (z -> 256 -> 512 -> 784 Bernoulli logits, trained as a plain VAE without free bits; everything else
equal: data, guide, estimator, optimiser, batch, seed). Then ``ppl-vae
evaluate RUN -k K --max-points N`` on each (importance-sampled log p(x), ELBO, KL per dimension and active units)
and ``ppl-vae sample RUN`` (the sample grid is copied next to the table).

Reported per model: test log p(x) and ELBO (nats, ± standard error over points), KL per dimension, active units,
seconds per epoch (median of ``epoch_time_s``) and seconds for the evaluation.

The issue's figure is K = 5000 on the full test set. With a PixelCNN decoder every importance sample is one pass
of the network over the image, so that is 50 million passes: state the K and the points you could afford.
A run that exists is resumed to ``--epochs`` (``fit --resume``), so an interrupted benchmark loses nothing.

``--study collapse`` instead trains variants of one PixelVAE config (default: the offline digits one) that the
literature uses against latent collapse (a strong decoder that ignores z): as shipped (free bits), without free bits,
a linear KL warm-up instead, a vector condition instead of the spatial map (with and without free bits), a one-layer
PixelCNN (a small receptive field) and a deeper one (a large receptive field), each
evaluated the same way; KL per dimension and active units show whether z is used.

Run from the repository root::

    python benchmarks/bench_pixelvae.py --epochs 3 --k 100 --eval-points 1000 --out bench_out/pixelvae
    python benchmarks/bench_pixelvae.py --study collapse --epochs 20 --out bench_out/pixelvae_collapse
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_autoencoders import _run  # noqa: E402
from bench_fit_vs_torch import hardware_info, write_results  # noqa: E402

CONFIG = "configs/pixelvae_bmnist.yaml"
#: --study collapse: variant -> --set overrides of the PixelVAE config
#: the conditioning the digits config had before the spatial map (cond_dim 16 is that config's; --config another one: adjust)
VECTOR = ["model.observed.net.kind=mlp", "model.observed.pixelcnn.condition=vector", "model.observed.pixelcnn.cond_dim=16"]
VARIANTS = {
    "as shipped (spatial conditioning, free bits)": [],
    "no free bits": ["kl_weighting.free_bits=0"],
    "KL warm-up (linear, 200 steps) instead of free bits": ["kl_weighting.free_bits=0", "kl_weighting.schedule=linear", "kl_weighting.warmup_steps=200"],
    "vector conditioning": VECTOR,
    "vector conditioning, no free bits": [*VECTOR, "kl_weighting.free_bits=0"],
    "1 PixelCNN layer": ["model.observed.pixelcnn.num_layers=1"],
    "4 PixelCNN layers": ["model.observed.pixelcnn.num_layers=4"],
}


def mlp_decoder(raw: dict) -> dict:
    """The same config with a factorised decoder: an MLP from z to 784 Bernoulli logits, trained as a plain VAE
    (no ``kl_weighting``: free bits is the PixelCNN's remedy against latent collapse, not part of the baseline)."""
    raw = copy.deepcopy(raw)
    raw.pop("kl_weighting", None)
    observed = raw["model"]["observed"]
    raw["model"]["observed"] = {"likelihood": "bernoulli", "parents": observed["parents"], "net": {"hidden_dims": [256, 512]}}
    raw["data"]["flatten"] = True
    return raw


def train_and_measure(raw: dict, name: str, args: argparse.Namespace, overrides: list[str] = ()) -> dict:
    """Fit (or resume) ``raw`` into ``--out``/runs/``name``, evaluate it, sample from it."""
    runs = Path(args.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    raw = copy.deepcopy(raw)
    raw["train"].update(epochs=args.epochs, device="cpu", progress=False)
    if args.num_train:
        raw["data"]["num_train"] = args.num_train
    config = runs / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    cli = [sys.executable, "-m", "ppl_vae.cli"]
    data = ("--data-dir", args.data_dir) if args.data_dir else ()
    run = runs / name
    if (run / "checkpoint.pt").exists():
        _run([*cli, "fit", "--resume", str(run), "--set", f"train.epochs={args.epochs}", *data])
    else:
        shutil.rmtree(run, ignore_errors=True)
        sets = [item for o in overrides for item in ("--set", o)]
        _run([*cli, "fit", str(config), "--out-dir", str(runs), "--name", name, *sets, *data])
    _run([*cli, "evaluate", str(run), "-k", str(args.k), "--max-points", str(args.eval_points), *data])
    _run([*cli, "sample", str(run), *data])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = sorted(run.glob("samples*.png"))
    if samples:
        shutil.copy(samples[-1], Path(args.out) / f"{name}_samples.png")
    return {"epochs": len(rows), "s_per_epoch": statistics.median(r["epoch_time_s"] for r in rows),
            "evaluation": json.loads((run / "evaluation.json").read_text())}


def table(rows: dict[str, dict], first: str = "decoder") -> str:
    lines = [f"| {first} | epochs | test log p(x) | test ELBO | KL per dim | active units | s/epoch | s/evaluation |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        e = r["evaluation"]
        lines.append(f"| {name} | {r['epochs']} | {e['log_likelihood']:.2f} ± {e['log_likelihood_stderr']:.2f} | "
                     f"{e['elbo']:.2f} ± {e['elbo_stderr']:.2f} | {e['kl_per_dim']:.3f} | {e['active_units']} | "
                     f"{r['s_per_epoch']:.1f} | {e['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs of both runs (default: 3)")
    p.add_argument("-k", "--k", type=int, default=100, help="importance samples per test point (issue's figure: 5000)")
    p.add_argument("--eval-points", type=int, default=1000, help="first test points evaluated (all: 10000)")
    p.add_argument("--num-train", type=int, default=None, help="training images (default: all 50,000)")
    p.add_argument("--study", choices=["decoders", "collapse"], default="decoders",
                   help="decoders: PixelVAE against the MLP decoder; collapse: the PixelVAE variants against latent collapse")
    p.add_argument("--config", default=None, help="--study collapse: the PixelVAE config (default: configs/pixelvae_digits.yaml)")
    p.add_argument("--models", nargs="+", choices=["pixelcnn", "mlp"], default=["mlp", "pixelcnn"])
    p.add_argument("--data-dir", default=os.environ.get("PPL_VAE_DATA"), help="folder holding binarized_mnist (default: $PPL_VAE_DATA)")
    p.add_argument("--out", default="bench_out/pixelvae", help="runs, sample grids and results.json go here")
    args = p.parse_args(argv)
    info = hardware_info(["cpu"])
    if args.study == "collapse":
        raw = yaml.safe_load((REPO / (args.config or "configs/pixelvae_digits.yaml")).read_text())
        runs = {name: (raw, sets) for name, sets in VARIANTS.items()}
        what = args.config or "configs/pixelvae_digits.yaml"
    else:
        raw = yaml.safe_load((REPO / CONFIG).read_text())
        runs = {name: ({"mlp": mlp_decoder(raw), "pixelcnn": raw}[name], []) for name in args.models}
        what = "binarized MNIST"
    rows = {}
    for i, (name, (config, sets)) in enumerate(runs.items()):
        rows[name] = train_and_measure(config, name if args.study == "decoders" else f"variant{i}", args, sets)
        print(f"  {name}: done", flush=True)
    print(f"{what}, {args.epochs} epoch(s) each, K = {args.k} on the first {args.eval_points} test points; "
          f"hardware: {info['cpu']} ({info['cpu_usable']} cores usable), no GPU; torch {info['torch']}, pyro {info['pyro']}")
    print(table(rows, "decoder" if args.study == "decoders" else "variant"))
    return write_results(str(Path(args.out) / "results.json"), {"hardware": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
