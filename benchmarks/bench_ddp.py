"""Data-parallel scaling of ``ppl-vae fit`` under ``torchrun``: throughput with 1, 2, ... processes.

Each configuration is one real launch of

    torchrun --standalone --nproc-per-node N -m ppl_vae.cli fit configs/vae_mnist.yaml ...

on the MNIST VAE of Burda et al. (784-200-200-50, tanh, Bernoulli, Trace_ELBO, Adam), with the same global
batch for every N (each rank computes B/N points a step), one torch thread per process, and no validation.
The time of an epoch is rank 0's ``epoch_time_s`` from ``metrics.jsonl`` (training steps only, each step
ending in the gradient all-reduce, so it waits for the slowest rank). Throughput is training points per
second over the timed epochs (the first epoch is a warm-up and not counted); the efficiency of N processes
is their throughput over N times that of one.

Launches alternate (1, 2, 1, 2, ... with ``--repeats``), so machine noise hits every N, and the table
reports the median over repeats. On a machine with GPUs, ``--device cuda`` runs one process per GPU
(``nccl``); on CPUs the backend is ``gloo``.

Run from the repository root::

    python benchmarks/bench_ddp.py --data-dir /path/to/data                      # 1 and 2 processes, CPU
    python benchmarks/bench_ddp.py --procs 1 2 4 --num-train 20000 --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fit_vs_torch import hardware_info, write_results  # noqa: E402


def launch(procs: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """One torchrun launch; returns rank 0's metrics rows."""
    name = f"n{procs}-{len(list(out.iterdir()))}"
    overrides = {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.val_every": 0, "train.progress": "false",
        "train.device": args.device, "data.num_train": args.num_train, "optim.schedule": "constant",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
        "-m", "ppl_vae.cli", "fit", str(REPO / "configs" / "vae_mnist.yaml"), "--out-dir", str(out), "--name", name,
        "--no-figures", *[a for k, v in overrides.items() if v is not None for a in ("--set", f"{k}={v}")],
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"torchrun with {procs} processes failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


def throughput(rows: list[dict], num_train: int) -> float:
    """Training points per second over the epochs after the first."""
    timed = rows[1:] or rows
    return num_train * len(timed) / sum(r["epoch_time_s"] for r in timed)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare (default: 1 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per launch, the first untimed (default: 3)")
    p.add_argument("--batch-size", type=int, default=100, help="global batch size (default: 100)")
    p.add_argument("--num-train", type=int, default=20000, help="MNIST training points (default: 20000)")
    p.add_argument("--repeats", type=int, default=2, help="launches of each process count, alternating (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (gloo) or cuda (nccl, one GPU per process)")
    p.add_argument("--data-dir", default=os.environ.get("PPL_VAE_DATA"), help="folder holding MNIST/raw (default: $PPL_VAE_DATA)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first is a warm-up)")

    rates: dict[int, list[float]] = {n: [] for n in args.procs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in args.procs:
                rates[n].append(throughput(launch(n, args, Path(tmp)), args.num_train))
    median = {n: statistics.median(v) for n, v in rates.items()}
    base = median[min(args.procs)] / min(args.procs)
    info = hardware_info(["cuda"] if args.device == "cuda" else ["cpu"])
    where = info["gpu"] or f"{info['cpu']} ({info['cpu_usable']} cores usable)"
    print(f"ppl-vae fit under torchrun, MNIST VAE 784-200-200-50, global batch {args.batch_size}, "
          f"{args.num_train} points, {args.epochs - 1} timed epochs x {args.repeats} launches, {args.threads} thread(s) per process")
    print(f"hardware: {where}; torch {info['torch']}, pyro {info['pyro']}")
    print(f"{'processes':>9}  {'points/s':>9}  {'speed-up':>8}  {'efficiency':>10}")
    for n in args.procs:
        print(f"{n:>9}  {median[n]:>9.0f}  {median[n] / median[min(args.procs)]:>8.2f}  {median[n] / (n * base):>10.2f}")
    return write_results(args.out, {"hardware": info, "args": vars(args), "points_per_s": rates, "median": median})


if __name__ == "__main__":
    main()
