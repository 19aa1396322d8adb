"""Interpolations between test images: linear and spherical paths between their codes, and the pixel blend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..programs import seeded
from ..schema import documented
from .codes import (
    check_count,
    check_images,
    data_pictures,
    decode_images,
    decoding_labels,
    points_of,
    posterior_means,
    real_sites,
    slerp,
)
from .figures import labelled_grid

__all__ = ["Interpolation", "interpolate"]


@documented
@dataclass
class Interpolation:
    """What :func:`interpolate` drew: per pair of test images, three rows (linear z, spherical z, pixels)."""

    #: the pairs of test images ``(i, j)``
    pairs: list[tuple[int, int]]
    #: the interpolation fractions, from 0 (image i) to 1 (image j)
    t: torch.Tensor
    #: linear interpolation of the codes, ``{site: (pairs, steps, *event)}``
    linear_codes: dict[str, torch.Tensor]
    #: spherical interpolation of the codes (see :func:`ppl_vae.explore.codes.slerp`), same shapes
    slerp_codes: dict[str, torch.Tensor]
    #: decoded linear path ``(pairs, steps, C, H, W)``
    linear_images: torch.Tensor
    #: decoded spherical path ``(pairs, steps, C, H, W)``
    slerp_images: torch.Tensor
    #: pixel-space blend (1 - t) x_i + t x_j ``(pairs, steps, C, H, W)``
    pixel_images: torch.Tensor
    #: the PNG written
    path: Path | None = None


def _interpolated(means: dict, real: list[str], ia: list[int], ib: list[int], t: torch.Tensor, spherical: bool
                  ) -> dict:
    """Codes along the paths: real sites interpolated (each site on its own), discrete sites switching from
    the first image's value to the second's at t = 0.5."""
    out = {}
    for name, value in means.items():
        a, b = value[ia], value[ib]
        if name in real:
            fa, fb = a.reshape(len(ia), -1), b.reshape(len(ib), -1)
            tt = t.reshape(1, -1, 1)
            path = slerp(fa, fb, t) if spherical else (1 - tt) * fa.unsqueeze(1) + tt * fb.unsqueeze(1)
            out[name] = path.reshape(len(ia), t.shape[0], *value.shape[1:])
        else:
            late = (t >= 0.5).reshape(1, -1, *[1] * (value.dim() - 1))
            out[name] = torch.where(late, b.unsqueeze(1), a.unsqueeze(1))
    return out


def interpolate(
    exp, out_dir: str | os.PathLike, *, pairs: Sequence[tuple[int, int]] = ((0, 1), (2, 3), (4, 5)),
    steps: int = 10, seed: int = 0,
) -> Interpolation:
    """Interpolations between pairs of test images (by index): their codes joined by a straight line and by a
    spherical path (:func:`ppl_vae.explore.codes.slerp`), each decoded, and the pixel-space blend for
    comparison. Each real-valued latent site is interpolated on its own; a discrete site switches from the first
    image's code to the second's at t = 0.5, and so does the label of a model that decodes with one. Writes
    ``interpolate.png`` in ``out_dir``.
    """
    check_images(exp)
    check_count("steps", steps, 2)
    pairs = [(int(i), int(j)) for i, j in pairs]
    if not pairs:
        raise ConfigError("interpolate needs at least one pair of test images")
    x, y = points_of(exp, max(max(p) for p in pairs) + 1)
    if min(min(p) for p in pairs) < 0 or max(max(p) for p in pairs) >= x.shape[0]:
        raise ConfigError(f"pairs must index test images between 0 and {x.shape[0] - 1}, got {pairs}")
    ia, ib = [i for i, _ in pairs], [j for _, j in pairs]
    t = torch.linspace(0, 1, steps, device=x.device)
    with seeded(seed):
        means = posterior_means(exp.model, exp.guide, x, y)
        labels = decoding_labels(exp.model, y, "interpolation")
        real = real_sites(exp, means, labels)
        if not real:
            raise ConfigError("the model has no real-valued latent site to interpolate")
        late = t.unsqueeze(0) >= 0.5
        path_labels = None if labels is None else torch.where(late, labels[ib, None], labels[ia, None]).reshape(-1)
        codes = {kind: _interpolated(means, real, ia, ib, t, kind == "slerp") for kind in ("linear", "slerp")}
        flat = {kind: {k: v.reshape(-1, *v.shape[2:]) for k, v in c.items()} for kind, c in codes.items()}
        images = {kind: decode_images(exp, flat[kind], path_labels) for kind in flat}
    shape = (len(pairs), steps, *exp.data.image_shape)
    blend = (1 - t.reshape(1, -1, 1)) * x[ia].reshape(len(ia), 1, -1) + t.reshape(1, -1, 1) * x[ib].reshape(len(ib), 1, -1)
    pixels = data_pictures(blend.reshape(-1, *x.shape[1:]), exp.data.image_shape).reshape(shape)
    out = Interpolation(pairs, t.cpu(), codes["linear"], codes["slerp"], images["linear"].reshape(shape),
                        images["slerp"].reshape(shape), pixels)
    out.path = _draw_interpolation(out, y, Path(out_dir) / "interpolate.png")
    return out


def _draw_interpolation(out: Interpolation, y, path: Path) -> Path:
    rows, names = [], []
    for p, (i, j) in enumerate(out.pairs):
        pair = f"test {i} -> {j}" + ("" if y is None else f" ({int(y[i])} -> {int(y[j])})")
        rows += [out.linear_images[p], out.slerp_images[p], out.pixel_images[p]]
        names += [f"{pair}: linear z", "slerp z", "pixels"]
    columns = [f"t={v:.2f}" for v in out.t.tolist()]
    title = "interpolation between test images: decoded linear and spherical paths in z, and the pixel blend"
    return labelled_grid(rows, names, columns, title, path)
