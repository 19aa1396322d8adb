"""Side-by-side comparisons: the same model trained with several estimators, or with several guides.

Every variant is the same experiment config with one thing changed, trained by
the one :func:`~ppl_vae.inference.fit` with the same seed, data order and number
of epochs, then evaluated on the same test points with the same K. Each
variant gets its own run directory inside the comparison's folder; a finished
variant's row is saved there, so rerunning an interrupted comparison with the
same ``--out`` skips what is done and resumes what was cut short.

Output: ``comparison.md`` (a Markdown table), ``comparison.csv`` and
``comparison.png`` (learning curves and one summary bar chart).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from .compat import site_is_subsample
from .config import ComponentConfig, ExperimentConfig, config_to_dict
from .errors import ConfigError
from .experiment import build_experiment, conditioning_labels, training_estimator
from .families import FAMILIES
from .guides import GUIDES
from .heads import HEADS, parse_head
from .inference.diagnostics import MIN_PSIS_SAMPLES, importance_diagnostics
from .inference.estimators import parse_estimator
from .inference.evaluate import eval_mode, evaluate
from .inference.fit import Callback, FitContext, fit
from .inference.gradients import gradient_stats
from .inference.reconstruction import point_mass_sites
from .inference.tracing import broadcasts_particles, max_plate_nesting, sample_traces
from .plots import plot_comparison
from .programs import PythonTarget, as_modules
from .runs import RunDir
from .schema import POSITIVE_INT, check_fields, documented, optional

log = logging.getLogger("ppl_vae")

__all__ = [
    "CompareConfig",
    "compare_estimators",
    "compare_guides",
    "estimator_variants",
    "guide_variants",
    "latent_usage",
]


@documented
@dataclass(frozen=True)
class CompareConfig:
    """What a comparison measures besides training."""

    #: test points evaluated (None: the whole test set)
    num_eval_points: int | None = 1000
    #: K importance samples per test point for log p(x)
    num_samples: int = 1000
    #: gradient draws per measurement of variance and SNR (estimators)
    grad_draws: int = 50
    #: epochs after which to measure gradients; () = after the first and the last
    grad_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, "compare", num_eval_points=optional(POSITIVE_INT), num_samples=POSITIVE_INT, grad_draws=POSITIVE_INT)


#: an import path: ``package.module:name`` or ``path/to/file.py:name``
_TARGET = re.compile(r"^[\w./-]+:[A-Za-z_][\w.]*$")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


# -- variants -------------------------------------------------------------------------------------


def estimator_variants(config: ExperimentConfig, names: Sequence[str]) -> list[tuple[str, ExperimentConfig]]:
    """One config per estimator name (``trace``, ``tracegraph:avg``, ``iwae:5``, ...).

    Options the config's estimator sets and the variant also has (``max_plate_nesting``, ...) carry over.
    """
    out = []
    for text in names:
        try:
            est = parse_estimator(text, base=config.estimator)
        except ValueError as err:
            raise ConfigError(f"--estimators {text!r}: {err}") from None
        out.append((text, replace(config, estimator=est)))
    return out


def _head_variant(config: ExperimentConfig, head: str) -> ExperimentConfig:
    """``config`` with ``head`` as the guide of every real-valued latent."""
    if config.guide.name == "spec":
        latents = {v.name: v for v in config.model.config.latents}
        factors = tuple(
            replace(f, head=head) if FAMILIES[latents[f.name].family].real_support else f
            for f in config.guide.config.factors
        )
        return replace(config, guide=ComponentConfig("spec", replace(config.guide.config, factors=factors)))
    if config.guide.name == "amortized":
        return replace(config, guide=ComponentConfig("amortized", replace(config.guide.config, head=head)))
    # A guide written by hand: the registry's amortized guide, with this head, stands in for it.
    return replace(config, guide=ComponentConfig("amortized", GUIDES["amortized"].config_cls(head=head)))


def guide_variants(config: ExperimentConfig, variants: Sequence[str]) -> list[tuple[str, ExperimentConfig]]:
    """One config per guide: a head (``normal``, ``fullcov``, ``iaf:4``, ...) for every real-valued latent of
    the config's guide, or a guide written in Python, named by import path (``my_models:guide``)."""
    out = []
    for text in variants:
        try:
            parse_head(text)
        except ValueError as err:
            if text.partition(":")[0] in HEADS or not _TARGET.match(text):
                raise ConfigError(f"--heads {text!r}: {err}") from None
            out.append((text, replace(config, guide=ComponentConfig("python", PythonTarget(text)))))
            continue
        try:
            out.append((text, _head_variant(config, text)))
        except ValueError as err:
            raise ConfigError(f"--heads {text!r}: {err}") from None
    return out


# -- measurements ---------------------------------------------------------------------------------


class _GradientProbe(Callback):
    """Measures gradient variance and SNR of the encoder (guide) and decoder (model) at chosen epochs."""

    def __init__(self, x, y, epochs: set[int], draws: int) -> None:
        self.x, self.y, self.epochs, self.draws = x, y, epochs, draws
        self.rows: list[dict] = []

    def on_epoch_end(self, ctx: FitContext, metrics: dict) -> None:
        if metrics["epoch"] not in self.epochs:
            return
        groups = {"encoder": list(ctx.guide.parameters()), "decoder": list(ctx.model.parameters())}
        stats = gradient_stats(ctx.model, ctx.guide, ctx.estimator, self.x, self.y, self.draws, groups, seed=metrics["epoch"])
        row = {"epoch": metrics["epoch"]}
        for name, g in stats.groups.items():
            row[f"{name}_grad_var"] = g.mean_variance
            row[f"{name}_grad_snr"] = g.snr
        metrics.update({k: v for k, v in row.items() if k != "epoch"})
        self.rows.append(row)


def _posterior_mean_variance(fn, value: torch.Tensor) -> torch.Tensor:
    """Per dimension, the variance over data points of the posterior mean E_q[z|x].

    Uses the guide's exact mean where the distribution has one. Otherwise (flows) the mean is estimated from
    the K draws in ``value`` ``(K, N, dim)``, whose Monte-Carlo noise would inflate the variance by about
    E_x[Var_q]/K; that bias is subtracted, so inactive units are not counted as active.
    """
    k, n = value.shape[:2]
    try:
        return fn.mean.reshape(-1, n, value.shape[-1])[0].var(0)
    except NotImplementedError:
        return value.mean(0).var(0) - value.var(0).mean(0) / k


def _latent_draws(model, guide, x: torch.Tensor, y, num_samples: int) -> dict[str, tuple]:
    """Per latent site of the guide: the summed ``log q - log p`` of the draws, the draws ``(K, N, size)`` and the
    guide's distribution. The K draws come in one vectorized pass, or one per pass for programs that do not
    broadcast over a particle dimension (as :func:`~ppl_vae.inference.evaluate.log_weights` draws them)."""
    n, nesting = x.shape[0], max_plate_nesting(model, guide, x, y)
    if broadcasts_particles(model, guide, x, y, nesting):
        passes = [sample_traces(model, guide, x, y, num_samples, nesting, True)]
    else:
        passes = [sample_traces(model, guide, x, y, 1, nesting, False) for _ in range(num_samples)]
    out: dict[str, tuple] = {}
    for name, site in passes[0][1].nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        log_ratio = sum(float((g.nodes[name]["fn"].log_prob(g.nodes[name]["value"])
                               - m.nodes[name]["fn"].log_prob(g.nodes[name]["value"])).detach().double().sum())
                        for m, g in passes)
        value = torch.stack([g.nodes[name]["value"] for _, g in passes]).reshape(num_samples, n, -1)
        out[name] = (log_ratio, value, site["fn"])
    return out


def latent_usage(model, guide, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int = 20) -> dict:
    """KL(q||p) per latent dimension and active units, per latent site, averaged over the points ``x``.

    KL is the Monte-Carlo mean of ``log q(z|x) - log p(z|parents)`` over ``num_samples`` draws, divided
    by the site's number of dimensions. A unit is active when the variance over data points of its
    posterior mean exceeds 0.01 (Burda et al. 2016); only real-valued sites have units. The mean is the
    guide's exact mean where it has one, else a Monte-Carlo estimate corrected for its noise.
    """
    out: dict[str, float] = {}
    model, guide = as_modules(model, guide)
    with eval_mode(model, guide):
        draws = _latent_draws(model, guide, x, y, num_samples)
    total_kl, total_dims, active = 0.0, 0, 0
    for name, (log_ratio, value, fn) in draws.items():
        kl, dims = log_ratio / (num_samples * x.shape[0]), value.shape[-1]  # per data point
        out[f"kl_per_dim[{name}]"] = kl / dims
        total_kl += kl
        total_dims += dims
        if value.is_floating_point():
            units = int((_posterior_mean_variance(fn, value) > 0.01).sum())
            out[f"active_units[{name}]"] = units
            active += units
    out["kl_per_dim"] = total_kl / max(total_dims, 1)
    out["active_units"] = active
    return out


# -- the runner -----------------------------------------------------------------------------------


def _train_variant(exp, config: ExperimentConfig, run: RunDir, compare: CompareConfig, measure_gradients: bool):
    callbacks: list[Callback] = []
    if measure_gradients:
        epochs = set(compare.grad_epochs) or {1, config.train.epochs}
        x_fixed = exp.data.fixed_train_x(config.train.batch_size, seed=config.train.seed)
        y_fixed = None if exp.data.y_train is None else exp.data.y_train[: config.train.batch_size]
        callbacks.append(_GradientProbe(x_fixed, y_fixed, epochs, compare.grad_draws))
    ss = config.semi_supervised
    return fit(
        exp.model, exp.guide, exp.data, estimator=training_estimator(config, exp.data), optim=config.optim,
        train=config.train, run_dir=run, resume=run.has_checkpoint(), callbacks=callbacks,
        labelled_per_batch=ss.labelled_per_batch if ss.enabled else None, run_config=config_to_dict(config),
    )


def _test_points(exp, device: str, compare: CompareConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = compare.num_eval_points
    x = exp.data.x_test.to(device)[:n]
    y = None if exp.data.y_test is None else exp.data.y_test.to(device)[:n]
    return x, conditioning_labels(exp.model, y)


def _row(label: str, history: list[dict], ev, wall: float) -> dict:
    row = {
        "variant": label,
        "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
        "test_elbo": ev.elbo,
        "test_elbo_se": ev.elbo_stderr,
        "test_log_px": ev.log_likelihood,
        "test_log_px_se": ev.log_likelihood_stderr,
        "gap": ev.log_likelihood - ev.elbo,
        "s_per_epoch": sum(h["epoch_time_s"] for h in history) / max(len(history), 1),
        "wall_s": wall,
        "num_eval_points": ev.num_points,
        "K": ev.num_samples,
    }
    if history and "test_accuracy" in history[-1]:
        row["test_error"] = 1.0 - history[-1]["test_accuracy"]
    last_grad = next((h for h in reversed(history) if "encoder_grad_var" in h), None)
    if last_grad is not None:
        for key in ("encoder_grad_var", "encoder_grad_snr", "decoder_grad_var", "decoder_grad_snr"):
            row[key] = last_grad[key]
    return row


def _refuse_point_mass(exp) -> None:
    """A point-mass guide (head: delta) has no log p(x) to compare: refuse the variant before training it."""
    x, y = exp.data.head(2)
    model, guide = as_modules(exp.model, exp.guide)
    with eval_mode(model, guide):
        if point_mass_sites(guide, x, conditioning_labels(model, y)):
            raise ConfigError(
                "the guide is a point mass (head delta, a deterministic encoder), so the importance-sampled log p(x) "
                "that compare reports means nothing for it; evaluate it with ppl-vae evaluate (reconstruction error)"
            )


def _run_variant(
    label: str, config: ExperimentConfig, run: RunDir, compare: CompareConfig, data_dir, kind: str
) -> dict:
    """Train one variant (or resume it), then evaluate it; a variant its estimator refuses is recorded as such."""
    try:
        exp = build_experiment(config, data_dir)
        _refuse_point_mass(exp)
        t0 = time.perf_counter()
        result = _train_variant(exp, config, run, compare, kind == "estimators")
    except ConfigError as err:
        log.info("[%s] refused: %s", label, err)
        return {"row": {"variant": label, "refused": str(err)}, "history": []}
    wall = time.perf_counter() - t0
    history = run.read_metrics()
    x, y = _test_points(exp, result.device, compare)
    ev = evaluate(exp.model, exp.guide, x, y, replace(config.eval, num_samples=compare.num_samples), progress=True)
    row = _row(label, history, ev, wall)
    if kind == "guides":
        diag = importance_diagnostics(exp.model, exp.guide, x, y, num_samples=compare.num_samples)
        row["share_khat_gt_0.7"] = diag.share_k_above
        row["mean_ess"] = diag.mean_ess
        row.update({k: v for k, v in latent_usage(exp.model, exp.guide, x, y).items() if "[" not in k})
    return {"row": row, "history": history}


def _write_outputs(out_dir: Path, results: list[dict], bar_key: str, bar_label: str, title: str) -> dict[str, Path]:
    rows = [r["row"] for r in results]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    md = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            # a refusal's first sentence in the table; the whole reason is in the CSV and variant.json
            text = f"{v:.4g}" if isinstance(v, float) else str(v).split(". ")[0].split(": ")[0] if c == "refused" else str(v)
            cells.append(text.replace("|", "/").replace("\n", " "))
        md.append("| " + " | ".join(cells) + " |")
    paths = {"md": out_dir / "comparison.md", "csv": out_dir / "comparison.csv", "png": out_dir / "comparison.png"}
    paths["md"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot_comparison({r["row"]["variant"]: r["history"] for r in results}, rows, bar_key, bar_label, title, paths["png"])
    return paths


def _compare(
    kind: str, variants: list[tuple[str, ExperimentConfig]], out_dir: str | Path, compare: CompareConfig, data_dir
) -> tuple[list[dict], dict[str, Path]]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for label, config in variants:
        run = RunDir(out / _slug(label))
        done = run.path / "variant.json"
        if done.is_file():
            log.info("[%s] done earlier; reusing %s", label, done)
            results.append(json.loads(done.read_text()))
            continue
        log.info("[%s] training %d epochs (%s)", label, config.train.epochs, "resuming" if run.has_checkpoint() else "fresh")
        res = _run_variant(label, config, run, compare, data_dir, kind)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json("variant.json", res)
        results.append(res)
        r = res["row"]
        if "test_elbo" in r:
            log.info("[%s] test ELBO %.3f, log p(x) %.3f, %.2f s/epoch", label, r["test_elbo"], r["test_log_px"], r["s_per_epoch"])
    if kind == "estimators":
        bar_key, bar_label = "encoder_grad_var", "encoder gradient variance (last checkpoint)"
    else:
        bar_key, bar_label = "test_log_px", "test log p(x), nats"
    paths = _write_outputs(out, results, bar_key, bar_label, f"compare-{kind}")
    return [r["row"] for r in results], paths


def _refuse_adversarial(config: ExperimentConfig, kind: str) -> None:
    """An adversarial autoencoder is trained by its own objective and has no bound to compare."""
    if config.adversarial is not None:
        raise ConfigError(
            f"compare-{kind} compares bounds, but this config's adversarial: section trains an adversarial autoencoder "
            "with its own objective; compare its runs with ppl-vae evaluate (reconstruction and MMD)"
        )


def compare_estimators(
    config: ExperimentConfig, estimators: Sequence[str], out_dir: str | Path, compare: CompareConfig | None = None, *, data_dir=None
) -> tuple[list[dict], dict[str, Path]]:
    """Train ``config`` with each estimator for the same budget and seed; report bounds, time and gradients.

    A variant whose estimator refuses the model and guide gets a row saying why; the others still run.
    """
    _refuse_adversarial(config, "estimators")
    return _compare("estimators", estimator_variants(config, estimators), out_dir, compare or CompareConfig(), data_dir)


def compare_guides(
    config: ExperimentConfig, guides: Sequence[str], out_dir: str | Path, compare: CompareConfig | None = None, *, data_dir=None
) -> tuple[list[dict], dict[str, Path]]:
    """Train ``config``'s model with each guide (a head, or a guide named by import path) for the same budget
    and seed; report bounds, the approximation gap, KL per dimension, active units, wall time and PSIS
    diagnostics.

    :raises ConfigError: for fewer importance samples than PSIS needs (``MIN_PSIS_SAMPLES``, 21).
    """
    _refuse_adversarial(config, "guides")
    compare = compare or CompareConfig()
    if compare.num_samples < MIN_PSIS_SAMPLES:
        raise ConfigError(
            f"compare-guides reports PSIS k-hat, which needs at least {MIN_PSIS_SAMPLES} importance samples per point "
            f"(-k {MIN_PSIS_SAMPLES} or more), got {compare.num_samples}"
        )
    return _compare("guides", guide_variants(config, guides), out_dir, compare, data_dir)
