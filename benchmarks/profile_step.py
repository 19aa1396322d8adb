"""Where one training step of ``ppl_vae.fit`` spends its time, per estimator and batch size.

For each estimator and batch size, one ``fit`` call trains the MNIST VAE of Burda et al. (2015)
(784-200-200-50, tanh, Bernoulli likelihood, the ``amortized`` guide with a diagonal-Normal head), or,
for an estimator that enumerates (``enum``), the shipped spec ``categorical_vae`` (a 10-way categorical
``c`` and a Normal ``z``) with the ``amortized`` guide. A ``fit`` callback measures inside that run:

1. ``--warmup-steps`` steps, not measured (Pyro's argument validation is on for the first 20 of them);
2. ``--timed-steps`` steps without a profiler: the wall time of each whole loop iteration (batch,
   step, optimizer, bookkeeping), reported as the median ms/step;
3. ``--profiled-steps`` steps under :mod:`cProfile`.

The profile is grouped by *what the time is for*, not only by file:

- a function's own time goes to the category of its file (``ppl_vae/...``, ``pyro/poutine``,
  ``pyro/infer``, ...); a C function (a torch op) is charged to the Python function that called it;
- four kinds of work claim everything they call, the outermost claim winning: the optimizer
  (``torch/optim``), backward (``torch.autograd``), distributions (``pyro/distributions``,
  ``torch/distributions``: construction, ``rsample``, ``log_prob``) and the networks' forward
  (``torch/nn`` layers and ``torch.nn.functional``). So a log-density's ``binary_cross_entropy_with_logits``
  counts as distributions, and the bookkeeping inside ``Adam.step`` as the optimizer.

cProfile adds a fixed cost to every Python and C call it records, which inflates Python-heavy
categories. The ``est. ms`` column removes it: the per-call cost is the difference between the profiled
and the unprofiled time per step, divided by the calls per step, and each category loses its calls
times that cost. It is an estimate; the shares are what to read.

Run from the repository root::

    python benchmarks/profile_step.py --threads 1                            # trace tracegraph enum iwae:5 at 16, 128
    python benchmarks/profile_step.py --estimator trace jit_trace --batch-size 100 --top 10
    python benchmarks/profile_step.py --data synthetic --profiled-steps 50    # no MNIST files needed

See ``benchmarks/README.md``.

References

- Burda, Y., Grosse, R. & Salakhutdinov, R. (2015). Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fit_vs_torch import build_model_and_guide, hardware_info, write_results  # noqa: E402

#: The categories of the profile, in table order, and the group of the issue's breakdown each belongs to.
CATEGORIES: dict[str, str] = {
    "ppl_vae step wrapper (inference/loop.py)": "ppl_vae",
    "ppl_vae batches (batches.py)": "ppl_vae",
    "ppl_vae model, guide, heads, likelihood": "ppl_vae",
    "ppl_vae estimators (inference/)": "ppl_vae",
    "Pyro poutine, sample sites, plates": "Pyro tracing",
    "Pyro ELBO (pyro/infer, pyro/ops)": "Pyro tracing",
    "PyroModule attribute access (pyro/nn)": "Pyro tracing",
    "distributions, rsample, log_prob": "distributions",
    "networks forward": "networks",
    "backward": "backward",
    "optimizer step, zero_grad": "optimizer",
    "other (torch tensor methods, stdlib, ...)": "other",
}
GROUPS = ("ppl_vae", "Pyro tracing", "distributions", "networks", "backward", "optimizer", "other")

_PPL, _BATCH, _MODEL, _EST, _POUTINE, _INFER, _PYNN, _DIST, _NETS, _BACKWARD, _OPTIM, _OTHER = CATEGORIES
#: Categories that claim the whole subtree of what they call (the outermost claim wins).
CLAIMING = (_OPTIM, _BACKWARD, _DIST, _NETS)


def _norm(filename: str) -> str:
    return filename.replace(os.sep, "/")


def file_category(filename: str, funcname: str) -> str:
    """The category of a Python function's own time, by its file."""
    f = _norm(filename)
    if "/ppl_vae/" in f:
        if f.endswith("/inference/loop.py"):
            return _PPL
        if f.endswith("/ppl_vae/batches.py") or f.endswith("/ppl_vae/labelled.py"):
            return _BATCH
        if "/ppl_vae/inference/" in f or f.endswith("/ppl_vae/compat.py"):
            return _EST
        return _MODEL
    if "/torch/optim/" in f or "/pyro/optim/" in f:
        return _OPTIM
    if f.endswith("/torch/autograd/__init__.py") or (f.endswith("/torch/_tensor.py") and funcname == "backward"):
        return _BACKWARD
    if "/pyro/distributions/" in f or "/torch/distributions/" in f:
        return _DIST
    if ("/torch/nn/modules/" in f and not f.endswith("/module.py")) or f.endswith("/torch/nn/functional.py"):
        return _NETS
    if f.endswith("/torch/nn/modules/module.py"):
        return _NETS  # module call dispatch (hooks, forward lookup)
    if "/pyro/infer/" in f or "/pyro/ops/" in f:
        return _INFER
    if "/pyro/nn/" in f:
        return _PYNN
    if "/pyro/" in f:
        return _POUTINE  # poutine, primitives, runtime, params, util
    return _OTHER


def _is_builtin(func: tuple) -> bool:
    return func[0] == "~" or func[0].startswith("<")


def _claims(func: tuple) -> Optional[str]:
    """The category a function claims its subtree for, or None."""
    if _is_builtin(func):
        return None
    category = file_category(func[0], func[2])
    if category not in CLAIMING:
        return None
    if category == _NETS and _norm(func[0]).endswith("/module.py"):
        return None  # dispatch: the model and guide are modules too
    return category


def _contexts(stats: dict) -> dict:
    """For each function, the share of its calls made inside each claiming category ({category: share}).

    A function's share is its callers' shares, weighted by the time spent in it from each caller; a
    claiming function adds its own category for the rest. Iterated to a fixed point (call graphs have cycles).
    """
    share: dict = {f: {} for f in stats}
    for _ in range(60):
        changed = False
        for f, (_, _, _, _, callers) in stats.items():
            total = sum(edge[3] for edge in callers.values())
            new: dict = defaultdict(float)
            for caller, edge in callers.items():
                weight = edge[3] / total if total > 0 else 1.0 / len(callers)
                for category, s in share.get(caller, {}).items():
                    new[category] += weight * s
            own = _claims(f)
            if own is not None:
                new[own] += max(0.0, 1.0 - sum(new.values()))
            new = {k: v for k, v in new.items() if v > 1e-9}
            if any(abs(new.get(k, 0) - share[f].get(k, 0)) > 1e-6 for k in set(new) | set(share[f])):
                share[f], changed = new, True
        if not changed:
            break
    return share


def categorize(stats: dict) -> tuple[dict, dict, dict]:
    """Own time (s) and calls per category, and own time per (category, function), from ``pstats`` data."""
    share = _contexts(stats)
    seconds: dict = defaultdict(float)
    calls: dict = defaultdict(float)
    per_function: dict = defaultdict(float)
    for f, (_, nc, tt, _, callers) in stats.items():
        edges = list(callers.items()) or [(None, (nc, nc, tt, tt))]
        for caller, edge in edges:
            e_calls, e_time = edge[1], edge[2]
            inside = share.get(caller, {}) if caller is not None else {}
            for category, s in inside.items():
                seconds[category] += s * e_time
                calls[category] += s * e_calls
                per_function[(category, f)] += s * e_time
            rest = 1.0 - sum(inside.values())
            if _claims(f) is not None:
                home = _claims(f)
            elif not _is_builtin(f):
                home = file_category(f[0], f[2])
            elif caller is not None and not _is_builtin(caller):
                home = file_category(caller[0], caller[2])
            else:
                home = _OTHER
            seconds[home] += rest * e_time
            calls[home] += rest * e_calls
            per_function[(home, f)] += rest * e_time
    return dict(seconds), dict(calls), dict(per_function)


# --------------------------------------------------------------------------- one configuration


def build(model_name: str, guide_name: str, seed: int):
    """The model and guide of one configuration, built from the global RNG seeded with ``seed``."""
    import ppl_vae
    from ppl_vae.models.presets import SPECS

    if model_name == "vae":
        return build_model_and_guide(seed)
    torch.manual_seed(seed)
    shipped = SPECS[model_name]
    model = ppl_vae.make_model("spec", (784,), shipped.model)
    if guide_name == "spec":
        return model, ppl_vae.make_guide("spec", model, shipped.guide)
    return model, ppl_vae.make_guide("amortized", model, ppl_vae.AmortizedGuideConfig(hidden_dims=(400,)))


def measure(data, estimator: str, model_name: str, guide_name: str, batch_size: int, args) -> dict:
    """Train one configuration with ``fit``; time and profile its steps from a callback."""
    from ppl_vae import Callback, OptimConfig, TrainConfig, fit
    from ppl_vae.errors import FitInterrupted

    model, guide = build(model_name, guide_name, args.seed)
    warm, timed, profiled = args.warmup_steps, args.timed_steps, args.profiled_steps
    total = warm + timed + profiled
    stamps: list[float] = []
    profiler = cProfile.Profile()

    class Window(Callback):
        """Stamps every step after the warm-up; profiles the last ``profiled`` ones; then stops the run."""

        count = 0

        def on_step(self, ctx, loss) -> None:
            self.count += 1
            if self.count == warm + timed:
                stamps.append(time.perf_counter())
                profiler.enable()
                return
            if self.count == total:
                profiler.disable()
                ctx.request_stop()
            if warm <= self.count < warm + timed:
                stamps.append(time.perf_counter())

    steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
    epochs = math.ceil((total + 1) / steps_per_epoch)
    try:
        fit(model, guide, data, estimator=estimator, optim=OptimConfig(lr=1e-3), callbacks=[Window()],
            train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=args.seed, device="cpu", progress=False, val_every=0))
    except FitInterrupted:
        pass
    step_times = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    stats = pstats.Stats(profiler).stats
    seconds, calls, per_function = categorize(stats)
    profile_s = sum(seconds.values()) / profiled
    return summarize(estimator, model_name, guide_name, batch_size, step_times, profile_s, seconds, calls, per_function,
                     profiled, steps_per_epoch)


def summarize(estimator, model_name, guide_name, batch_size, step_times, profile_s, seconds, calls, per_function,
              profiled, steps_per_epoch) -> dict:
    """Per-category ms per step, raw and with cProfile's per-call cost removed, and the top functions."""
    wall_ms = 1000 * statistics.median(step_times)
    raw = {c: 1000 * seconds.get(c, 0.0) / profiled for c in CATEGORIES}
    n_calls = {c: calls.get(c, 0.0) / profiled for c in CATEGORIES}
    per_call = max(0.0, (sum(raw.values()) - wall_ms) / max(sum(n_calls.values()), 1.0))
    est = {c: max(0.0, raw[c] - per_call * n_calls[c]) for c in CATEGORIES}
    scale = wall_ms / sum(est.values()) if sum(est.values()) > 0 else 1.0
    est = {c: v * scale for c, v in est.items()}  # the estimate sums to the unprofiled step time
    top = sorted(per_function.items(), key=lambda kv: -kv[1])
    return {
        "estimator": estimator, "model": model_name, "guide": guide_name, "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "step_ms_median": wall_ms, "step_ms_mean": 1000 * statistics.fmean(step_times),
        "step_ms_min": 1000 * min(step_times), "profiled_step_ms": 1000 * profile_s,
        "cprofile_cost_us_per_call": 1e6 * per_call / 1000,
        "calls_per_step": sum(n_calls.values()),
        "raw_ms": raw, "est_ms": est,
        "groups_est_ms": {g: sum(v for c, v in est.items() if CATEGORIES[c] == g) for g in GROUPS},
        "top": [
            {"category": c, "function": f"{_short(f[0])}:{f[1]}({f[2]})", "ms": 1000 * s / profiled}
            for (c, f), s in top[:60]
        ],
    }


def _short(filename: str) -> str:
    f = _norm(filename)
    for marker in ("/site-packages/", "/work/main/"):
        if marker in f:
            return f.split(marker, 1)[1]
    return f.rsplit("/", 2)[-1] if "/" in f else f


# --------------------------------------------------------------------------- report


def group_table(rows: Sequence[dict]) -> str:
    head = "| estimator | model | batch | ms/step | " + " | ".join(GROUPS) + " |"
    lines = [head, "|---|---|---:|---:|" + "---:|" * len(GROUPS)]
    for r in rows:
        cells = [f"{r['groups_est_ms'][g]:.2f} ({100 * r['groups_est_ms'][g] / r['step_ms_median']:.0f}%)" for g in GROUPS]
        lines.append(f"| {r['estimator']} | {r['model']} | {r['batch_size']} | {r['step_ms_median']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(r: dict, top: int) -> str:
    lines = [
        f"### {r['estimator']}, {r['model']} ({r['guide']} guide), batch {r['batch_size']}: {r['step_ms_median']:.2f} ms/step "
        f"unprofiled (median; mean {r['step_ms_mean']:.2f}, min {r['step_ms_min']:.2f}), {r['profiled_step_ms']:.2f} ms "
        f"profiled, {r['calls_per_step']:.0f} calls/step, cProfile cost {r['cprofile_cost_us_per_call']:.2f} us/call",
        "",
        "| category | group | profiled ms | share | est. ms | est. share |",
        "|---|---|---:|---:|---:|---:|",
    ]
    raw_total = sum(r["raw_ms"].values())
    for c, g in CATEGORIES.items():
        lines.append(f"| {c} | {g} | {r['raw_ms'][c]:.3f} | {100 * r['raw_ms'][c] / raw_total:.1f}% "
                     f"| {r['est_ms'][c]:.3f} | {100 * r['est_ms'][c] / r['step_ms_median']:.1f}% |")
    if top:
        lines += ["", f"Top {top} functions by own time (profiled ms/step):", ""]
        lines += [f"- {t['ms']:.3f} ms  {t['function']}  [{t['category']}]" for t in r["top"][:top]]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Profile one training step of ppl_vae's fit, grouped by what the time is for.")
    p.add_argument("--estimator", nargs="+", default=["trace", "tracegraph", "enum", "iwae:5"],
                   help="estimators, with ':' arguments (default: trace tracegraph enum iwae:5)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[16, 128], help="batch sizes (default: 16 128)")
    p.add_argument("--model", choices=["auto", "vae", "categorical_vae"], default="auto",
                   help="auto (default): categorical_vae for estimators that enumerate, else the MNIST vae")
    p.add_argument("--guide", choices=["amortized", "spec"], default="amortized",
                   help="categorical_vae's guide: amortized (default) or the shipped spec guide q(c|x) q(z|x,c)")
    p.add_argument("--data", choices=["mnist", "synthetic"], default="mnist",
                   help="MNIST from --data-dir (dynamic binarization), or random binary 784-vectors")
    p.add_argument("--data-dir", default=os.environ.get("PPL_VAE_DATA"), help="folder holding MNIST/raw (default: $PPL_VAE_DATA)")
    p.add_argument("--num-train", type=int, default=10000, help="training points (default: 10000)")
    p.add_argument("--warmup-steps", type=int, default=30, help="untimed steps first (default: 30)")
    p.add_argument("--timed-steps", type=int, default=100, help="unprofiled timed steps (default: 100)")
    p.add_argument("--profiled-steps", type=int, default=100, help="steps under cProfile (default: 100)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    p.add_argument("--top", type=int, default=0, help="also list the N functions with the most own time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if min(args.batch_size) < 1 or args.timed_steps < 3 or args.profiled_steps < 1 or args.warmup_steps < 0:
        p.error("--batch-size and --profiled-steps must be positive, --timed-steps at least 3")
    return args


def load(args):
    from ppl_vae.data import DataConfig, Dataset, load_dataset

    if args.data == "synthetic":
        g = torch.Generator().manual_seed(args.seed)
        return Dataset.from_tensor(torch.bernoulli(torch.full((args.num_train, 784), 0.2), generator=g), "synthetic")
    return load_dataset(DataConfig(name="mnist", data_dir=args.data_dir, binarize="dynamic", val_fraction=0.0,
                                   num_train=args.num_train, seed=args.seed))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Profile every (estimator, batch size); print the environment and the tables; return the results."""
    args = parse_args(argv)
    from ppl_vae.inference.estimators import ESTIMATORS, parse_estimator

    torch.set_num_threads(args.threads)
    info = hardware_info(["cpu"])
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"CPU: {info['cpu']} ({info['cpu_usable']} usable of {info['cpu_count']} cores), torch threads: "
          f"{info['torch_threads']}; load average at start {info['load_average']}")
    print(f"torch {info['torch']}, pyro {info['pyro']}, Python {info['python']}, {info['platform']}")
    data = load(args)
    print(f"data: {args.data}, {len(data.x_train)} training points; {args.warmup_steps} warm-up, {args.timed_steps} timed, "
          f"{args.profiled_steps} profiled steps per configuration", flush=True)
    rows = []
    for estimator in args.estimator:
        enumerates = ESTIMATORS[parse_estimator(estimator).name].enumerates
        model_name = args.model if args.model != "auto" else ("categorical_vae" if enumerates else "vae")
        for batch_size in args.batch_size:
            rows.append(measure(data, estimator, model_name, args.guide if model_name != "vae" else "amortized",
                                batch_size, args))
            print(f"  {estimator} B={batch_size}: {rows[-1]['step_ms_median']:.2f} ms/step", flush=True)
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print(group_table(rows))
    print()
    print("ms/step: median wall time of a whole loop iteration without the profiler; groups: estimated ms/step (share) "
          "with cProfile's per-call cost removed. Load average at the end: " + str(info["load_average_end"]))
    for r in rows:
        print()
        print(detail_table(r, args.top))
    return write_results(args.out, {"hardware": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
