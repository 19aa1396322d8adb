"""Figures: sample grids, reconstructions and learning curves (matplotlib, no display needed).

Nothing here is called from inside the training loop. The functions work on any
model and guide that follow the contract of :mod:`ppl_vae.contract`: samples come
from the model run with its data site unconditioned on a batch of zeros, and every
figure reads the mean of the data site's distribution from a Pyro trace. Figures
that need a capability (a class latent, for class grids) say so when it is missing.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # figures go to files; never ask for a display
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from .contract import (  # noqa: E402
    ClassConditional,
    Classifier,
    HasLabelClasses,
    HasLikelihood,
    capability,
    data_site_name,
    needs_labels,
)
from .inference.evaluate import eval_mode  # noqa: E402
from .likelihoods import Likelihood  # noqa: E402
from .programs import as_module, as_modules  # noqa: E402
from .runs import atomic_write_bytes  # noqa: E402
from .schema import documented

__all__ = [
    "save_image_grid",
    "sample_images",
    "reconstruct_images",
    "plot_samples",
    "plot_reconstructions",
    "plot_learning_curves",
    "plot_comparison",
    "class_grid_images",
    "analogy_images",
    "plot_class_grid",
    "plot_analogies",
    "generate",
    "run_figures",
    "RunFigures",
]


def _site_mean(trace, name: str) -> torch.Tensor:
    site = trace.nodes[name]
    try:
        return site["fn"].mean
    except NotImplementedError:
        return site["value"].float()


def _as_images(x: torch.Tensor, image_shape: Sequence[int], scale: float = 1.0) -> torch.Tensor:
    # (N, *x_shape) -> (N, C, H, W)
    return (x.detach().float().cpu() / scale).clamp(0, 1).reshape(x.shape[0], *image_shape)


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Save images ``(N, C, H, W)`` with values in [0, 1] as a PNG grid."""
    from torchvision.utils import make_grid

    n = images.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)  # (C, H', W')
    array = grid.permute(1, 2, 0).numpy()
    if array.shape[2] == 1 or images.shape[1] == 1:
        array = array[..., 0]
    height, width = array.shape[:2]
    scale = max(1.0, 6.0 / max(height, width) * 100)
    fig = plt.figure(figsize=(width * scale / 100, height * scale / 100 + (0.4 if title else 0)), dpi=100)
    ax = fig.add_axes((0, 0, 1, height * scale / 100 / fig.get_figheight()))
    ax.imshow(array, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure atomically (a temporary file, then a rename), so a full disk never leaves half a PNG."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))
    return path


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def _generation_labels(model, num_samples: int) -> torch.Tensor | None:
    """Labels 0, 1, 2, ... (cycling) for a model that needs labels (a conditional VAE); None otherwise."""
    if not needs_labels(model):
        return None
    classes = capability(model, HasLabelClasses)
    if classes is None or not classes.label_classes:
        raise ValueError(
            "sampling from a model conditioned on labels needs the number of classes (a label_classes attribute); "
            "a real-valued input must be passed by hand"
        )
    return torch.arange(num_samples, device=_device(model)) % classes.label_classes


def generate(model, num_samples: int, x_shape: Sequence[int], y: torch.Tensor | None = None, conditioned: dict | None = None):
    """A trace of the model generating ``num_samples`` points: latents from the prior, the data site
    unconditioned (``poutine.uncondition``) on a batch of zeros, other sites set by ``conditioned``."""
    model = as_module(model)
    zeros = torch.zeros((num_samples, *x_shape), device=_device(model))
    generative = poutine.uncondition(model)
    if conditioned:
        generative = poutine.condition(generative, data=conditioned)
    with eval_mode(model):
        return poutine.trace(generative).get_trace(zeros, y)


def sample_images(model, num_samples: int, x_shape: Sequence[int], *, seed: int | None = None) -> torch.Tensor:
    """Means of p(x|z) for ``num_samples`` draws z from the prior, shape ``(n, *x_shape)``.

    A model conditioned on a class label gets the labels 0, 1, 2, ... in turn (one class per column
    of a 10-wide grid).
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    trace = generate(model, num_samples, x_shape, _generation_labels(model, num_samples))
    return _site_mean(trace, data_site_name(model, trace))


def reconstruct_images(model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Means of p(x|z) with z drawn from q(z|x), shape like ``x``."""
    model, guide = as_modules(model, guide)
    with eval_mode(model, guide):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return _site_mean(trace, data_site_name(model, trace))


def _pixel_scale(model) -> float:
    declared = capability(model, HasLikelihood)
    return declared.likelihood.pixel_scale if declared is not None and isinstance(declared.likelihood, Likelihood) else 1.0


def plot_samples(
    model, num_samples: int, image_shape: Sequence[int], path: str | os.PathLike, *, seed: int | None = 0,
    x_shape: Sequence[int] | None = None,
) -> Path:
    """A PNG grid of samples from the model (the means of p(x|z), z ~ p(z))."""
    x_shape = x_shape or image_shape
    images = _as_images(sample_images(model, num_samples, x_shape, seed=seed), image_shape, _pixel_scale(model))
    if _generation_labels(model, num_samples) is not None:
        return save_image_grid(images, path, nrow=10, title=f"{num_samples} samples, column = class y")
    return save_image_grid(images, path, title=f"{num_samples} samples: mean of p(x|z), z ~ p(z)")


def plot_reconstructions(
    model, guide, x: torch.Tensor, image_shape: Sequence[int], path: str | os.PathLike, y: torch.Tensor | None = None
) -> Path:
    """A PNG with test images in odd rows and their reconstructions below them."""
    recon = reconstruct_images(model, guide, x, y)
    n = x.shape[0]
    nrow = min(n, 10)
    originals = _as_images(x, image_shape)
    recons = _as_images(recon, image_shape, _pixel_scale(model))
    rows = []
    for start in range(0, n, nrow):
        rows += [originals[start : start + nrow], recons[start : start + nrow]]
    return save_image_grid(torch.cat(rows), path, nrow=nrow, title="data (odd rows) and reconstructions (even rows)")


# -- semi-supervised models (M2): vary the class, keep the style ------------------------------


def _class_conditional(model) -> ClassConditional:
    declared = capability(model, ClassConditional)
    if declared is None:
        raise ValueError(
            "this model has no class latent beside a style latent z (the ClassConditional capability, as M2 has), "
            "so it cannot vary the class"
        )
    return declared


def _decode_with_classes(model, z: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """Means of p(x|y,z) for each row of ``z`` and every class: ``(num_rows * num_classes, *x_shape)``."""
    declared = _class_conditional(model)
    num_rows, num_classes = z.shape[0], declared.num_classes
    classes = torch.arange(num_classes, device=z.device).repeat(num_rows)  # row-major: a row per style
    z_rep = z.repeat_interleave(num_classes, dim=0)  # (rows * classes, z_dim)
    values = {declared.label_site: declared.label_value(classes), "z": z_rep}
    trace = generate(model, z_rep.shape[0], x_shape, conditioned=values)
    return _site_mean(trace, data_site_name(model, trace))


def class_grid_images(model, x_shape: Sequence[int], num_styles: int = 8, *, seed: int | None = 0) -> torch.Tensor:
    """Conditional generation: ``num_styles`` draws z ~ p(z) (rows), each decoded with every class y (columns)."""
    _class_conditional(model)
    if seed is not None:
        pyro.set_rng_seed(seed)
    z = generate(model, num_styles, x_shape).nodes["z"]["value"]
    return _decode_with_classes(model, z, x_shape)


def analogy_images(model, guide, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Analogies: the style of each test image, z = mean of q(z|x,y) with its true class, decoded with every class.

    :returns: ``(N * (1 + num_classes), *x_shape)``: per row, the image and then its style in classes 0, 1, ...
    """
    declared = _class_conditional(model)
    model, guide = as_modules(model, guide)
    with eval_mode(model, guide):
        site = poutine.trace(guide).get_trace(x, y).nodes["z"]
        try:
            z = site["fn"].mean
        except NotImplementedError:
            z = site["value"]
    decoded = _decode_with_classes(model, z, x.shape[1:]).reshape(x.shape[0], declared.num_classes, *x.shape[1:])
    return torch.cat([x.unsqueeze(1).to(decoded.dtype), decoded], 1).reshape(-1, *x.shape[1:])


def plot_class_grid(
    model, image_shape: Sequence[int], path: str | os.PathLike, *, num_styles: int = 8, seed: int | None = 0,
    x_shape: Sequence[int] | None = None,
) -> Path:
    """A PNG: rows are styles z ~ p(z), columns are the classes y."""
    images = _as_images(class_grid_images(model, x_shape or image_shape, num_styles, seed=seed), image_shape, _pixel_scale(model))
    return save_image_grid(images, path, nrow=_class_conditional(model).num_classes, title="conditional generation: row = style z, column = class y")


def plot_analogies(model, guide, x: torch.Tensor, y: torch.Tensor, image_shape: Sequence[int], path: str | os.PathLike) -> Path:
    """A PNG: each row is a test image, then its style (from q(z|x,y)) decoded with every class."""
    images = _as_images(analogy_images(model, guide, x, y), image_shape, _pixel_scale(model))
    return save_image_grid(images, path, nrow=1 + _class_conditional(model).num_classes, title="analogies: test image, then its style in each class")


def plot_learning_curves(metrics: Sequence[dict], path: str | os.PathLike) -> Path:
    """Training loss and validation -ELBO per epoch, in nats per data point; for a semi-supervised
    run, a second panel with the classification error of q(y|x) on the validation and test sets."""
    errors = {
        name: [(m["epoch"], 100 * (1 - m[key])) for m in metrics if key in m]
        for name, key in (("validation", "val_accuracy"), ("test", "test_accuracy"))
    }
    errors = {name: points for name, points in errors.items() if points}
    fig, axes = plt.subplots(1, 2 if errors else 1, figsize=(10 if errors else 5, 3.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    epochs = [m["epoch"] for m in metrics]
    # a semi-supervised objective also holds the labelled terms and the auxiliary classification term
    loss_label = "train loss (incl. labelled and aux. terms)" if errors else "train loss (-ELBO)"
    ax.plot(epochs, [m["train_loss"] for m in metrics], label=loss_label)
    val = [(m["epoch"], -m["val_elbo"]) for m in metrics if "val_elbo" in m]
    if val:
        ax.plot(*zip(*val), marker="o", markersize=3, label="validation -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.legend()
    ax.grid(alpha=0.3)
    if errors:
        ax = axes[0, 1]
        for name, points in errors.items():
            ax.plot(*zip(*points), label=f"{name} error")
        ax.set_xlabel("epoch")
        ax.set_ylabel("classification error of q(y|x), %")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_comparison(
    histories: dict[str, Sequence[dict]],
    rows: Sequence[dict],
    bar_key: str,
    bar_label: str,
    title: str,
    path: str | os.PathLike,
) -> Path:
    """Learning curves of every variant (left) and one summary metric per variant as bars (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for label, history in histories.items():
        if history:
            left.plot([m["epoch"] for m in history], [m["train_loss"] for m in history], label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("train loss (-bound), nats per point")
    left.grid(alpha=0.3)
    if any(histories.values()):  # every variant refused: no curve to label
        left.legend(fontsize=8)
    labels = [r["variant"] for r in rows if isinstance(r.get(bar_key), (int, float))]
    values = [r[bar_key] for r in rows if isinstance(r.get(bar_key), (int, float))]
    right.bar(range(len(values)), values, color="tab:blue")
    right.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    right.set_ylabel(bar_label)
    if values and "var" in bar_key and min(values) > 0:
        right.set_yscale("log")
    if values and "log_px" in bar_key:
        span = max(values) - min(values)
        right.set_ylim(min(values) - max(span, 0.5), max(values) + 0.2 * max(span, 0.5))
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


@documented
@dataclass
class RunFigures:
    """What :func:`run_figures` wrote, and the figures it skipped with the reason."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_figures(exp, out: str | os.PathLike, num_samples: int = 64, seed: int = 0) -> RunFigures:
    """Samples and reconstructions of test images beside ``out`` and, for a model with a class latent
    (M2's :class:`~ppl_vae.contract.ClassConditional`), the class grid and analogies.

    An M1+M2 run's M2 models the codes of its first stage, not images: its figures are skipped (the first
    stage's are in ``RUN/m1``).
    """
    out, figures = Path(out), RunFigures()
    if exp.stage is not None:
        figures.skipped.append("this M2 models the latent codes of its M1 stage, not images; see RUN/m1 for M1's figures")
        return figures

    def beside(name: str) -> Path:
        return out.with_name(f"{name}.png" if out.stem == "samples" else f"{out.stem}_{name}.png")

    out.parent.mkdir(parents=True, exist_ok=True)
    image_shape, x_shape = exp.data.image_shape, exp.data.x_shape
    figures.paths.append(plot_samples(exp.model, num_samples, image_shape, out, seed=seed, x_shape=x_shape))
    x, y = exp.data.head(30)
    labels = y if needs_labels(exp.model) else None
    figures.paths.append(plot_reconstructions(exp.model, exp.guide, x, image_shape, beside("reconstructions"), labels))
    if capability(exp.model, ClassConditional) is None:
        if capability(exp.guide, Classifier) is not None:
            figures.skipped.append("class grid and analogies: the model has no class latent beside a style z (as M2 has)")
        return figures
    figures.paths.append(plot_class_grid(exp.model, image_shape, beside("classes"), seed=seed, x_shape=x_shape))
    if y is not None:
        figures.paths.append(plot_analogies(exp.model, exp.guide, x[:8], y[:8], image_shape, beside("analogies")))
    return figures
