"""A VQ-VAE's codebook usage: how many code positions of the test images each of the K codes takes.

``ppl-vae fit`` writes it to ``codebook_usage.png`` in the run directory for a VQ-VAE run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..plots import _save_figure  # noqa: I001 (first: it selects matplotlib's Agg backend)
from ..inference.codebook import code_counts, dead_codes, is_vqvae, perplexity

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["CodebookUsage", "codebook_usage", "plot_codebook_usage"]


@dataclass(frozen=True)
class CodebookUsage:
    """The usage counts ``(K,)`` behind the figure, and where it was written."""

    counts: torch.Tensor
    path: Path


def plot_codebook_usage(counts: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """A bar chart of ``counts`` ``(K,)``, codes sorted from most to least used, with perplexity and dead codes."""
    counts = counts.detach().cpu()
    ordered = counts.sort(descending=True).values.double()
    share = (ordered / ordered.sum().clamp_min(1)).numpy()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(len(share)), share, width=1.0, color="tab:blue")
    ax.set_xlabel(f"code (sorted by use; K = {len(share)})")
    ax.set_ylabel("share of positions")
    stats = f"perplexity {perplexity(counts):.1f}, dead codes {dead_codes(counts)}"
    ax.set_title(f"{title}: {stats}" if title else stats, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save_figure(fig, path)


def codebook_usage(exp, path: str | Path, max_points: int = 10_000) -> CodebookUsage:
    """Count the codes the experiment's guide assigns to (up to ``max_points``) test images, and plot them.

    :raises ValueError: for an experiment that is not a VQ-VAE.
    """
    if not is_vqvae(exp.model, exp.guide):
        raise ValueError("the codebook usage figure is drawn for a vqvae model and guide only")
    x = exp.data.x_test if exp.data.x_test.shape[0] else exp.data.x_train
    counts = code_counts(exp.guide, x[:max_points])
    return CodebookUsage(counts, plot_codebook_usage(counts, path, f"codebook usage on {min(len(x), max_points)} images"))
