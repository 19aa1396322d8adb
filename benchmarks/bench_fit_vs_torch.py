"""Speed of ppl_vae's ``fit`` against a hand-written PyTorch loop on the same VAE.

The model is the one-stochastic-layer MNIST VAE of Burda et al. (2015):
784-200-200-50 with tanh units, a Bernoulli likelihood and a diagonal-Normal
guide, trained with Adam (lr 1e-3) on dynamically binarized MNIST.

Two trainers run in one process, on identical networks and identical batches:

* **ppl_vae**: ``ppl_vae.fit(model, guide, data, estimator="trace")``,
  i.e. Pyro's ``Trace_ELBO`` on the ``vae`` model and the ``amortized`` guide
  (``AmortizedGuide`` with a diagonal-Normal head on ``z``).
* **torch**: a plain PyTorch loop over deep copies of the same decoder and
  encoder (the guide's ``trunk`` followed by the linear layer of its ``z`` head),
  so the initial weights are equal, fed by the same
  :class:`ppl_vae.data.Batches` (same seed, so the same order and the same
  per-batch binarization draws). Its loss is the single-sample ELBO that
  ``Trace_ELBO`` estimates: with ``z = loc + scale * eps``,
  ``log p(x|z) + log p(z) - log q(z|x)`` evaluated at the sampled ``z``,
  averaged over the batch; ``loss.item()`` is called every step, as ``fit``
  converts its loss to a float every step.

Epochs are interleaved: ``fit`` runs all epochs in one call, and a ``fit``
callback runs one torch epoch after each ``fit`` epoch (outside ``fit``'s own
epoch timer), so machine noise hits both. ``fit``'s time per epoch is its
``epoch_time_s`` (on CUDA plus the wait for the device to finish). Warm-up
steps on throw-away copies of the networks come first and are not counted.

Run from the repository root::

    python benchmarks/bench_fit_vs_torch.py --data-dir /work/shared/data
    python benchmarks/bench_fit_vs_torch.py --num-train 10000 --epochs 2   # quick

See ``benchmarks/README.md`` for the options.

References

- Burda, Y., Grosse, R. & Salakhutdinov, R. (2015). Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import pyro
import torch
from torch.nn import functional as F

LATENT_DIM = 50
HIDDEN_DIMS = (200, 200)
ACTIVATION = "tanh"
LR = 1e-3
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _ensure_ppl_vae_importable() -> None:
    """Let ``python benchmarks/bench_fit_vs_torch.py`` find the package without installing it."""
    try:
        import ppl_vae  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# --------------------------------------------------------------------------- environment


def hardware_info(devices: Sequence[str]) -> dict:
    """CPU model, core counts, torch threads, GPU name and library versions."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_validation": _pyro_validation_enabled(),
        "gpu": None,
    }
    if any(d.startswith("cuda") for d in devices):
        info["gpu"] = torch.cuda.get_device_name(torch.device(next(d for d in devices if d.startswith("cuda"))))
        info["cuda"] = torch.version.cuda
    return info


def _pyro_validation_enabled() -> Optional[bool]:
    try:
        from pyro.infer.util import is_validation_enabled

        return bool(is_validation_enabled())
    except ImportError:  # pragma: no cover - older or newer Pyro
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the hand-written loop


class TorchVAE:
    """The hand-written trainer: copies of ppl_vae's encoder and decoder, plain PyTorch, Adam.

    :param encoder: the guide's encoder, ``x -> (loc, raw_scale)`` of size ``2 * latent_dim``
        (:func:`guide_encoder`: the amortized guide's trunk and its ``z`` head's linear layer).
    :param decoder: the model's decoder, ``z -> Bernoulli logits``.
    :param float min_scale: the guide's floor on the scale (``softplus(raw) + min_scale``).
    """

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module, latent_dim: int, min_scale: float,
                 device: torch.device, seed: int, adam: str = "same") -> None:
        self.encoder = copy.deepcopy(encoder).to(device)
        self.decoder = copy.deepcopy(decoder).to(device)
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        if adam == "same":  # the Adam that fit builds (PyTorch's fused kernel where the parameters allow it)
            from ppl_vae.inference.training import OptimConfig, make_optimizer

            self.optimizer = make_optimizer(params, OptimConfig(lr=LR))
        else:  # torch.optim.Adam with PyTorch's default implementation (one tensor at a time on a CPU)
            self.optimizer = torch.optim.Adam(params, lr=LR)
        # Its own noise stream, so the two trainers do not perturb each other's draws.
        self.generator = torch.Generator(device=device).manual_seed(seed + 7919)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative single-sample ELBO in nats per data point (the Trace_ELBO estimator)."""
        loc, raw_scale = self.encoder(x).split(self.latent_dim, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        eps = torch.randn(loc.shape, generator=self.generator, device=loc.device, dtype=loc.dtype)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - _HALF_LOG_2PI).sum(-1)
        log_qz = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - _HALF_LOG_2PI).sum(-1)
        return -(log_px + log_pz - log_qz).mean()

    def step(self, x: torch.Tensor) -> float:
        loss = self.loss(x)
        loss.backward()
        value = loss.item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def train_epoch(self, batches, epoch: int, max_steps: Optional[int] = None) -> tuple[float, float]:
        """One epoch over ``batches.epoch(epoch)``; returns (seconds, mean loss per point)."""
        self.encoder.train()
        self.decoder.train()
        device = batches.x.device
        _sync(device)
        t0 = time.perf_counter()
        loss_sum, points = 0.0, 0
        for step, xb, _ in batches.epoch(epoch):
            if max_steps is not None and step >= max_steps:
                break
            loss_sum += self.step(xb) * xb.shape[0]
            points += xb.shape[0]
        _sync(device)
        return time.perf_counter() - t0, loss_sum / max(points, 1)


# --------------------------------------------------------------------------- one configuration


def build_model_and_guide(seed: int):
    """The Burda et al. (2015) one-layer VAE as ppl_vae objects, seeded.

    The model and then the guide are built from one global torch stream seeded with ``seed`` (so
    ``make_model``/``make_guide`` get no ``seed=`` of their own): the decoder's layers, then the guide's
    trunk, then its ``z`` head, the order (and so the initial weights) of the earlier ``VAE`` +
    ``NormalGuide`` pair. Tracing the model for the guide's latent sites draws nothing from that stream.
    """
    import ppl_vae

    torch.manual_seed(seed)
    model = ppl_vae.make_model("vae", (784,), ppl_vae.VAEConfig(
        latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS, activation=ACTIVATION, likelihood="bernoulli"))
    guide = ppl_vae.make_guide("amortized", model, ppl_vae.AmortizedGuideConfig(
        hidden_dims=HIDDEN_DIMS[::-1], activation=ACTIVATION, head="normal", min_scale=1e-4))
    return model, guide


def guide_encoder(guide) -> torch.nn.Module:
    """The amortized guide's network ``x -> (loc, raw_scale)``: its trunk, then the linear layer of its ``z`` head.

    The modules are the guide's own (not copies); :class:`TorchVAE` deep-copies them.
    """
    head = guide.heads["z"]
    if head.linear.out_features != 2 * LATENT_DIM:
        raise RuntimeError(f"expected a diagonal-Normal head with {2 * LATENT_DIM} outputs, got {head}")
    return torch.nn.Sequential(*guide.trunk, head.linear)


def guide_min_scale(guide) -> float:
    """The floor on the scale of q(z|x) (``scale = softplus(raw) + min_scale``)."""
    return guide.heads["z"].min_scale


def warm_up(data, device: torch.device, batch_size: int, steps: int, seed: int, estimator: str = "trace",
            adam: str = "same") -> None:
    """Run ``steps`` steps of each trainer on throw-away networks (lazy init, allocator, kernels)."""
    if steps < 1:
        return
    from ppl_vae import OptimConfig, TrainConfig, fit
    from ppl_vae.data import Batches

    model, guide = build_model_and_guide(seed + 1)
    n = min(len(data.x_train), steps * batch_size)
    small = replace(data, x_train=data.x_train[:n], y_train=None, x_val=data.x_val[:0], y_val=None)
    fit(model, guide, small, estimator=estimator, optim=OptimConfig(lr=LR),
        train=TrainConfig(epochs=1, batch_size=batch_size, seed=seed, device=str(device), progress=False, val_every=0))
    hand = TorchVAE(guide_encoder(guide), model.decoder, LATENT_DIM, guide_min_scale(guide), device, seed, adam)
    x = data.x_train[:n].to(device)
    hand.train_epoch(Batches(x, batch_size=batch_size, seed=seed, binarize=True), 0, max_steps=steps)


def bench_config(
    data, device: torch.device, batch_size: int, epochs: int, seed: int, warmup_steps: int, estimator: str = "trace",
    adam: str = "same",
) -> dict:
    """Interleave ``epochs`` ppl_vae epochs with ``epochs`` torch epochs; return times and losses."""
    from ppl_vae import Callback, OptimConfig, TrainConfig, fit
    from ppl_vae.data import Batches

    warm_up(data, device, batch_size, warmup_steps, seed, estimator, adam)

    model, guide = build_model_and_guide(seed)
    # Copies taken before fit touches anything: both trainers start from the same weights.
    hand = TorchVAE(guide_encoder(guide), model.decoder, LATENT_DIM, guide_min_scale(guide), device, seed, adam)
    # The same Batches fit builds (same tensor, batch size, seed, dynamic binarization), so the same batches.
    x_dev = data.x_train.to(device)
    batches = Batches(x_dev, None, batch_size=batch_size, seed=seed, binarize=data.binarize == "dynamic")
    ppl_times: list[float] = []
    torch_times: list[float] = []
    torch_losses: list[float] = []

    class Interleave(Callback):
        """After each fit epoch (whose time fit has already taken), run one torch epoch."""

        def on_epoch_end(self, ctx, metrics) -> None:
            t0 = time.perf_counter()
            _sync(device)  # fit's timer does not wait for the device; add what was still queued
            ppl_times.append(metrics["epoch_time_s"] + time.perf_counter() - t0)
            seconds, loss = hand.train_epoch(batches, ctx.epoch)
            torch_times.append(seconds)
            torch_losses.append(loss)
            print(
                f"  [{device.type} {estimator} B={batch_size}] epoch {ctx.epoch + 1}/{epochs}: "
                f"ppl_vae {ppl_times[-1]:.3f}s loss {metrics['train_loss']:.3f} | "
                f"torch {seconds:.3f}s loss {loss:.3f}",
                flush=True,
            )

    result = fit(
        model,
        guide,
        data,
        estimator=estimator,
        optim=OptimConfig(lr=LR),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=str(device), progress=False,
                          val_every=0),
        callbacks=[Interleave()],
    )
    steps = len(batches)
    ppl_med = statistics.median(ppl_times)
    torch_med = statistics.median(torch_times)
    return {
        "device": device.type if device.index is None else str(device),
        "estimator": estimator,
        "batch_size": batch_size,
        "num_train": len(data.x_train),
        "steps_per_epoch": steps,
        "epochs": epochs,
        "ppl_vae_epoch_s": ppl_times,
        "torch_epoch_s": torch_times,
        "ppl_vae_median_s": ppl_med,
        "torch_median_s": torch_med,
        "ratio": ppl_med / torch_med,
        "ppl_vae_min_s": min(ppl_times),
        "torch_min_s": min(torch_times),
        "ratio_of_min": min(ppl_times) / min(torch_times),
        "overhead_ms_per_step": 1000 * (ppl_med - torch_med) / steps,
        "ppl_vae_train_loss": [row["train_loss"] for row in result.history],
        "torch_train_loss": torch_losses,
        "ppl_vae_final_loss": result.final_loss,
        "torch_final_loss": torch_losses[-1],
    }


# --------------------------------------------------------------------------- report


def markdown_table(rows: Sequence[dict]) -> str:
    head = (
        "| device | estimator | batch size | steps/epoch | ppl_vae s/epoch | torch s/epoch | ratio | ratio of fastest epochs "
        "| overhead ms/step | ppl_vae final loss | torch final loss |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['estimator']} | {r['batch_size']} | {r['steps_per_epoch']} | {r['ppl_vae_median_s']:.3f} "
            f"| {r['torch_median_s']:.3f} | {r['ratio']:.2f} | {r['ratio_of_min']:.2f} | {r['overhead_ms_per_step']:.2f} "
            f"| {r['ppl_vae_final_loss']:.2f} | {r['torch_final_loss']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time ppl_vae's fit against a hand-written PyTorch loop on the Burda et al. MNIST VAE.",
    )
    p.add_argument("--data-dir", default=os.environ.get("PPL_VAE_DATA"),
                   help="folder holding MNIST/raw/*.gz (default: $PPL_VAE_DATA)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[100], help="one or more batch sizes (default: 100)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each trainer, interleaved (default: 3)")
    p.add_argument("--num-train", type=int, default=None,
                   help="keep only this many training points (default: all 60000)")
    p.add_argument("--warmup-steps", type=int, default=50, help="untimed steps of each trainer before timing (default: 50)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="cpu: CPU only; cuda: CPU and CUDA; auto (default): CPU, and CUDA when present")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU runs (with --device cuda/auto)")
    p.add_argument("--estimator", nargs="+", default=["trace"],
                   help="ppl_vae estimators to time, each a name with optional ':' arguments, e.g. trace jit_trace "
                   "iwae:5 (default: trace); the torch loop is the single-sample ELBO whatever is chosen")
    p.add_argument("--torch-adam", choices=["same", "default"], default="same",
                   help="the hand-written loop's optimizer: same (default): the Adam fit builds (fused where the "
                        "parameters allow it); default: torch.optim.Adam(params, lr) as written by hand")
    p.add_argument("--seed", type=int, default=0, help="seeds the networks, batch order and binarization (default: 0)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.epochs < 1 or any(b < 1 for b in args.batch_size):
        p.error("--epochs and --batch-size must be positive")
    return args


def write_results(out: Optional[str], results: dict) -> dict:
    """Write ``results`` as JSON to ``out`` (when given, saying so); return them."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; print the environment and a Markdown table; return the results."""
    args = parse_args(argv)
    _ensure_ppl_vae_importable()
    from ppl_vae.data import DataConfig, load_dataset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [] if args.no_cpu else ["cpu"]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but CUDA is not available")
        devices.append("cuda")
    if not devices:
        raise SystemExit("nothing to run: --no-cpu and no CUDA device")

    info = hardware_info(devices)
    print(f"CPU: {info['cpu']} ({info['cpu_usable']} usable of {info['cpu_count']} cores), "
          f"torch threads: {info['torch_threads']}")
    if info["gpu"]:
        print(f"GPU: {info['gpu']} (CUDA {info['cuda']})")
    print(f"torch {info['torch']}, pyro {info['pyro']} (validation {'on' if info['pyro_validation'] else 'off'}), "
          f"Python {info['python']}, {info['platform']}")

    # The full MNIST training set (60k; no validation split: nothing is validated here).
    data = load_dataset(DataConfig(name="mnist", data_dir=args.data_dir, binarize="dynamic", val_fraction=0.0,
                                   num_train=args.num_train, seed=args.seed))
    print(f"MNIST: {len(data.x_train)} training points, dynamic binarization; "
          f"784-{'-'.join(map(str, HIDDEN_DIMS))}-{LATENT_DIM} {ACTIVATION}, Adam lr {LR} (hand-written loop: {args.torch_adam} Adam); "
          f"{args.epochs} timed epochs each, interleaved, after {args.warmup_steps} warm-up steps", flush=True)

    rows = []
    for name in devices:
        for estimator in args.estimator:
            for batch_size in args.batch_size:
                rows.append(bench_config(data, torch.device(name), batch_size, args.epochs, args.seed,
                                         args.warmup_steps, estimator, args.torch_adam))

    print()
    print(markdown_table(rows))
    print()
    print("s/epoch: median over the timed epochs; ratio = ppl_vae / torch of those medians; ratio of fastest "
          "epochs = the same for each trainer's fastest epoch (steadier on a busy machine); overhead = extra "
          "ppl_vae time per step from the medians; losses: the last epoch's mean negative ELBO, nats per point.")
    return write_results(args.out, {"hardware": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
