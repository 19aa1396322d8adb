"""The denoising figure of a guide that corrupts its input in training: clean, corrupted and reconstructed images.

``ppl-vae fit`` writes it as ``denoising.png`` in the run directory for such a guide
(:class:`~ppl_vae.guides.corruption.Corrupts`). The corruption is the guide's own, drawn from a private,
seeded random stream (the global one is left as it was); the reconstruction is the mean of ``p(x|z)`` with
``z`` from the guide run in eval mode on the *corrupted* images, so it shows what the encoder learnt to undo.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..contract import capability, needs_labels
from ..guides.corruption import Corrupts, corrupt
from ..plots import reconstruct_images, save_image_grid

__all__ = ["denoising_images", "plot_denoising"]


def denoising_images(exp, num_images: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(clean, corrupted, reconstructed)`` images of the first test points, each ``(N, *x_shape)``;
    None for a guide that does not corrupt its input."""
    declared = capability(exp.guide, Corrupts)
    if declared is None or declared.corruption is None:
        return None
    x, y = exp.data.head(num_images)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        noisy = corrupt(x, declared.corruption)
    labels = y if needs_labels(exp.model) else None
    return x, noisy, reconstruct_images(exp.model, exp.guide, noisy, labels)


def plot_denoising(exp, path: str | os.PathLike, num_images: int = 10, seed: int = 0) -> Path | None:
    """Save the denoising grid (rows: clean, corrupted, reconstruction) to ``path``; None (nothing written) for a
    guide that does not corrupt its input, or an M1+M2 run (whose second stage models codes, not images)."""
    if exp.stage is not None:
        return None
    images = denoising_images(exp, num_images, seed)
    if images is None:
        return None
    shape = exp.data.image_shape
    # three rows of (N, *x_shape) -> (3N, C, H, W)
    rows = torch.cat([t.detach().float().cpu().clamp(0, 1).reshape(t.shape[0], *shape) for t in images])
    kind = capability(exp.guide, Corrupts).corruption
    title = f"clean / corrupted ({kind.kind}, rate {kind.rate:g}) / reconstructed"
    return save_image_grid(rows, path, nrow=images[0].shape[0], title=title)
