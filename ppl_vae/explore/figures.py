"""The figures of :mod:`ppl_vae.explore`: image grids with labelled rows and columns, and labelled scatter plots.

Written through :func:`ppl_vae.plots._save_figure` (atomically, matplotlib's Agg backend: no display needed).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..plots import _save_figure  # noqa: I001 (first: it selects matplotlib's Agg backend)
from ..runs import atomic_write_bytes

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["labelled_grid", "scatter_panels"]


def _save(fig, path: str | Path, grey: bool = False) -> Path:
    """Write a figure atomically (:func:`ppl_vae.plots._save_figure`); with ``grey``, a figure in shades of grey
    only (an image grid) as a one-channel PNG: a quarter of the RGBA data, and about half the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not grey:
        return _save_figure(fig, path)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    if path.suffix != ".png" or not (rgba[..., 3] == 255).all() or not (rgba[..., :3] == rgba[..., :1]).all():
        return _save_figure(fig, path)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba[..., 0]), mode="L").save(buffer, format="png", optimize=True)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))
    return path


def _cells(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Rows of images ``(n_i, C, H, W)`` as one array, a cell per image (white where a row is short)."""
    from torchvision.utils import make_grid

    width = max(r.shape[0] for r in rows)
    channels, height, wide = rows[0].shape[1:]
    cells = torch.ones(len(rows), width, channels, height, wide)
    for i, row in enumerate(rows):
        cells[i, : row.shape[0]] = row.detach().float().cpu()
    grid = make_grid(cells.reshape(-1, channels, height, wide), nrow=width, padding=1, pad_value=1.0)
    array = grid.permute(1, 2, 0).numpy()
    return array[..., 0] if channels == 1 else array


def labelled_grid(
    rows: Sequence[torch.Tensor], row_labels: Sequence[str], column_labels: Sequence[str] | None, title: str,
    path: str | Path, *, zoom: int | None = None,
) -> Path:
    """A PNG of image rows ``(n_i, C, H, W)`` in [0, 1], a label left of each row and above each column.

    :param zoom: screen pixels per image pixel, a whole number so that images are never resampled (default: 2
        for images of 20 pixels or more, else 5).
    """
    height, width = rows[0].shape[-2:]
    columns = max(r.shape[0] for r in rows)
    zoom = zoom or (2 if height >= 20 else 5)
    grid_w, grid_h = (columns * (width + 1) + 1) * zoom, (len(rows) * (height + 1) + 1) * zoom  # pixels
    left = 16 + 6 * max((len(label) for label in row_labels), default=0)
    fig_w = left + grid_w + 12
    lines = textwrap.wrap(title, max(50, fig_w // 7))
    top = 14 + 16 * len(lines) + (22 if column_labels else 0)
    fig_h = top + grid_h + 8
    fig = plt.figure(figsize=(fig_w / 100, fig_h / 100), dpi=100)
    ax = fig.add_axes((left / fig_w, 8 / fig_h, grid_w / fig_w, grid_h / fig_h))
    ax.imshow(_cells(rows), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_yticks([1 + i * (height + 1) + (height - 1) / 2 for i in range(len(rows))], list(row_labels), fontsize=8)
    if column_labels:
        ax.set_xticks([1 + i * (width + 1) + (width - 1) / 2 for i in range(len(column_labels))], list(column_labels),
                      fontsize=7)
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.text(0.5, 1 - 6 / fig_h, "\n".join(lines), ha="center", va="top", fontsize=9)
    return _save(fig, path, grey=True)


def scatter_panels(
    panels: dict[str, np.ndarray], axis_names: dict[str, tuple[str, str]], labels: np.ndarray | None, title: str,
    path: str | Path,
) -> Path:
    """Side-by-side scatter plots of 2-D points ``(N, 2)``, coloured by ``labels`` with a legend (uncoloured
    without labels)."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n + (0.9 if labels is not None else 0), 4.5), dpi=100,
                             squeeze=False, layout="constrained")
    classes = [] if labels is None else sorted(np.unique(labels).tolist())
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    size = 4 if max(len(p) for p in panels.values()) > 1000 else 10
    for ax, (name, points) in zip(axes[0], panels.items()):
        if labels is None:
            ax.scatter(points[:, 0], points[:, 1], s=size, color="tab:blue", alpha=0.6, linewidths=0)
        elif len(classes) > 20:
            shown = ax.scatter(points[:, 0], points[:, 1], s=size, c=labels, cmap="viridis", alpha=0.7, linewidths=0)
        else:
            for k, value in enumerate(classes):
                mask = labels == value
                ax.scatter(points[mask, 0], points[mask, 1], s=size, color=cmap(k), alpha=0.7, linewidths=0, label=str(value))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(axis_names[name][0], fontsize=9)
        ax.set_ylabel(axis_names[name][1], fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.2)
    if labels is not None and len(classes) > 20:
        fig.colorbar(shown, ax=axes[0, -1], label="label")
    elif labels is not None:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), title="label", loc="outside right center", markerscale=2.5,
                   fontsize=8, title_fontsize=9)
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 13))), fontsize=10)
    return _save(fig, path)
