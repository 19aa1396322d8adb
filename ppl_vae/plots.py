"""Figures: sample grids, reconstructions and learning curves (matplotlib, no display needed).

Nothing here is called from inside the training loop. The functions work on
any model whose ``forward(x=None, y=None, num_samples=n)`` generates data at a
site named ``x``, and any guide with the matching signature: they read the
mean of the ``x`` site's distribution from a Pyro trace.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # figures go to files; never ask for a display
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from .inference.evaluate import eval_mode  # noqa: E402

__all__ = [
    "save_image_grid",
    "sample_images",
    "reconstruct_images",
    "plot_samples",
    "plot_reconstructions",
    "plot_learning_curves",
    "plot_comparison",
    "label_latent",
    "class_grid_images",
    "analogy_images",
    "plot_class_grid",
    "plot_analogies",
]


def _site_mean(trace, name: str = "x") -> torch.Tensor:
    site = trace.nodes[name]
    try:
        return site["fn"].mean
    except NotImplementedError:
        return site["value"].float()


def _as_images(x: torch.Tensor, image_shape: Sequence[int], scale: float = 1.0) -> torch.Tensor:
    # (N, *x_shape) -> (N, C, H, W)
    return (x.detach().float().cpu() / scale).clamp(0, 1).reshape(x.shape[0], *image_shape)


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, *, nrow: Optional[int] = None, title: Optional[str] = None
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
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _generation_labels(model, num_samples: int) -> Optional[torch.Tensor]:
    """Labels 0, 1, 2, ... (cycling) for a model conditioned on a categorical input y; None otherwise."""
    inputs = getattr(getattr(model, "spec", None), "inputs", ())
    if not inputs:
        return None
    spec = inputs[0]
    device = next(iter(model.parameters())).device
    if spec.kind == "categorical":
        return torch.arange(num_samples, device=device) % spec.dim
    raise ValueError("sampling from a model conditioned on a real-valued input needs that input; pass it yourself")


def sample_images(model, num_samples: int, *, seed: Optional[int] = None) -> torch.Tensor:
    """Means of p(x|z) for ``num_samples`` draws z from the prior, shape ``(n, *x_shape)``.

    A model conditioned on a class label gets the labels 0, 1, 2, ... in turn (one class per column
    of a 10-wide grid).
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    with eval_mode(model):
        trace = poutine.trace(model).get_trace(None, _generation_labels(model, num_samples), num_samples)
    return _site_mean(trace)


def reconstruct_images(model, guide, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Means of p(x|z) with z drawn from q(z|x), shape like ``x``."""
    with eval_mode(model, guide):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return _site_mean(trace)


def _pixel_scale(model) -> float:
    likelihood = getattr(model, "likelihood", None)
    return 255.0 if getattr(likelihood, "name", "") == "categorical256" else 1.0


def plot_samples(model, num_samples: int, image_shape: Sequence[int], path: str | os.PathLike, *, seed: Optional[int] = 0) -> Path:
    """A PNG grid of samples from the model (the means of p(x|z), z ~ p(z))."""
    images = _as_images(sample_images(model, num_samples, seed=seed), image_shape, _pixel_scale(model))
    if _generation_labels(model, num_samples) is not None:
        return save_image_grid(images, path, nrow=10, title=f"{num_samples} samples, column = class y")
    return save_image_grid(images, path, title=f"{num_samples} samples: mean of p(x|z), z ~ p(z)")


def plot_reconstructions(
    model, guide, x: torch.Tensor, image_shape: Sequence[int], path: str | os.PathLike, y: Optional[torch.Tensor] = None
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


def label_latent(model):
    """The spec of the model's semi-observed class latent (M2's ``y``), or None."""
    spec = getattr(model, "spec", None)
    return next((v for v in getattr(spec, "latents", ()) if v.observed_when_given), None)


def _decode_with_classes(model, z: torch.Tensor, latent) -> torch.Tensor:
    """Means of p(x|y,z) for each row of ``z`` and every class: ``(num_rows * num_classes, *x_shape)``."""
    num_rows, num_classes = z.shape[0], latent.dim
    classes = torch.arange(num_classes, device=z.device).repeat(num_rows)  # row-major: a row per style
    z_rep = z.repeat_interleave(num_classes, dim=0)  # (rows * classes, z_dim)
    values = {latent.name: model.label_value(latent, classes), "z": z_rep}
    with eval_mode(model):
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(None, None, z_rep.shape[0])
    return _site_mean(trace)


def _require_label(model):
    latent = label_latent(model)
    if latent is None:
        raise ValueError("this model has no semi-observed class latent (observed_when_given), so it cannot vary the class")
    if "z" not in getattr(model, "latent_specs", {}):
        raise ValueError("varying the class keeps the style z fixed, but this model has no latent named 'z'")
    return latent


def class_grid_images(model, num_styles: int = 8, *, seed: Optional[int] = 0) -> torch.Tensor:
    """Conditional generation: ``num_styles`` draws z ~ p(z) (rows), each decoded with every class y (columns)."""
    latent = _require_label(model)
    if seed is not None:
        pyro.set_rng_seed(seed)
    with eval_mode(model):
        z = poutine.trace(model).get_trace(None, None, num_styles).nodes["z"]["value"]
    return _decode_with_classes(model, z, latent)


def analogy_images(model, guide, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Analogies: the style of each test image, z = mean of q(z|x,y) with its true class, decoded with every class.

    :returns: ``(N * (1 + num_classes), *x_shape)``: per row, the image and then its style in classes 0, 1, ...
    """
    latent = _require_label(model)
    with eval_mode(model, guide):
        fn = poutine.trace(guide).get_trace(x, y).nodes["z"]["fn"]
        try:
            z = fn.mean
        except NotImplementedError:
            z = poutine.trace(guide).get_trace(x, y).nodes["z"]["value"]
    decoded = _decode_with_classes(model, z, latent).reshape(x.shape[0], latent.dim, *x.shape[1:])
    return torch.cat([x.unsqueeze(1).to(decoded.dtype), decoded], 1).reshape(-1, *x.shape[1:])


def plot_class_grid(model, image_shape: Sequence[int], path: str | os.PathLike, *, num_styles: int = 8, seed: Optional[int] = 0) -> Path:
    """A PNG: rows are styles z ~ p(z), columns are the classes y."""
    images = _as_images(class_grid_images(model, num_styles, seed=seed), image_shape, _pixel_scale(model))
    return save_image_grid(images, path, nrow=label_latent(model).dim, title="conditional generation: row = style z, column = class y")


def plot_analogies(model, guide, x: torch.Tensor, y: torch.Tensor, image_shape: Sequence[int], path: str | os.PathLike) -> Path:
    """A PNG: each row is a test image, then its style (from q(z|x,y)) decoded with every class."""
    images = _as_images(analogy_images(model, guide, x, y), image_shape, _pixel_scale(model))
    return save_image_grid(images, path, nrow=1 + label_latent(model).dim, title="analogies: test image, then its style in each class")


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
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


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
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
