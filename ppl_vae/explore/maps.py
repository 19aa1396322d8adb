"""The latent map: the test points' posterior means in 2-D, coloured by label, and a 2-D latent's manifold."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..contract import needs_labels
from ..errors import ConfigError
from ..programs import seeded
from ..schema import documented
from .codes import (
    check_count,
    check_images,
    decode_images,
    decoding_labels,
    flatten_codes,
    points_of,
    posterior_means,
    prior_means,
    prior_trace,
    real_sites,
)
from .figures import labelled_grid, scatter_panels

__all__ = ["LatentMap", "latent_map", "METHODS"]


@documented
@dataclass
class LatentMap:
    """What :func:`latent_map` drew: the test points' codes in 2-D and, for a 2-D latent, the manifold grid."""

    #: the real-valued latent sites mapped, side by side in ``codes``
    sites: list[str]
    #: posterior means of the test points ``(N, D)``
    codes: torch.Tensor
    #: the points' labels ``(N,)``; None when the data set has none (the map is then uncoloured)
    labels: torch.Tensor | None
    #: per panel (``latent``, ``PCA``, ``t-SNE``, ``UMAP``), the points in 2-D ``(N, 2)``
    embeddings: dict[str, np.ndarray]
    #: the manifold grid's codes ``(n, n, 2)``, rows from the highest second coordinate down; None unless 2-D
    grid_codes: torch.Tensor | None = None
    #: the decoded manifold grid ``(n, n, C, H, W)``
    grid_images: torch.Tensor | None = None
    #: what was left out of the figures, and why (no labels, no grid)
    notes: list[str] = field(default_factory=list)
    #: the PNGs written: ``map.png``, and ``manifold.png`` for a 2-D latent
    paths: list[Path] = field(default_factory=list)


#: the 2-D embeddings a map can show: name -> panel title
METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


def _umap_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def _methods(methods: Sequence[str] | None) -> list[str]:
    if methods is None:
        return ["pca", "tsne"] + (["umap"] if _umap_installed() else [])
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"map methods must be some of {list(METHODS)}, got {list(methods)}")
    if "umap" in methods and not _umap_installed():
        raise ConfigError("UMAP is not installed (pip install umap-learn); the other methods are pca and tsne")
    return list(methods)


def _embed(codes: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D points of ``codes`` by PCA, t-SNE or UMAP, and the axes' names."""
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=seed).fit(codes)
        share = [f"{100 * r:.0f}% of variance" for r in pca.explained_variance_ratio_]
        return pca.transform(codes), (f"PC 1 ({share[0]})", f"PC 2 ({share[1]})")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (codes.shape[0] - 1) / 3)
        tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
        return tsne.fit_transform(codes), (f"t-SNE 1 (perplexity {perplexity:.0f})", "t-SNE 2")
    import warnings

    import umap

    with warnings.catch_warnings():  # umap says that a random_state makes it use one thread
        warnings.simplefilter("ignore", UserWarning)
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(codes), ("UMAP 1", "UMAP 2")


def _manifold(exp, means: dict, site: str, n: int, label) -> tuple[torch.Tensor, torch.Tensor]:
    """Kingma & Welling's manifold: a regular n x n grid on the unit square, at the cell centres, through the
    inverse CDF of the prior of the 2-D site (other latent sites at their prior means), decoded."""
    base = prior_means(exp.model, list(means), exp.data.x_shape, label)
    fn = prior_trace(exp.model, base, exp.data.x_shape, label).nodes[site]["fn"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    u = (torch.arange(n, device=base[site].device, dtype=base[site].dtype) + 0.5) / n
    try:
        axis = fn.icdf(u.reshape(n, 1, 1).expand(n, 1, 2)).reshape(n, 2)  # (n, 2): quantiles per coordinate
    except (NotImplementedError, AttributeError):
        raise ConfigError(f"the prior of latent site {site!r} ({type(fn).__name__}) has no inverse CDF") from None
    grid = torch.stack([axis[:, 0].reshape(1, n).expand(n, n), axis.flip(0)[:, 1].reshape(n, 1).expand(n, n)], -1)
    codes = {k: v.expand(n * n, *v.shape[1:]).clone() for k, v in base.items()}
    codes[site] = grid.reshape(n * n, *base[site].shape[1:])
    labels = None if label is None else label.expand(n * n)
    return grid, decode_images(exp, codes, labels).reshape(n, n, *exp.data.image_shape)


def latent_map(
    exp, out_dir: str | os.PathLike, *, points: int = 2000, methods: Sequence[str] | None = None, grid: int = 20,
    seed: int = 0,
) -> LatentMap:
    """The posterior means of the first ``points`` test points in 2-D, coloured by label with a legend
    (uncoloured, and said so in ``notes`` and the title, on data without labels): the latent itself when the
    real-valued latent sites have 2 dimensions in all, else one panel per method of ``methods``: ``pca``,
    ``tsne`` (scikit-learn) and ``umap`` (when installed; all available by default). Writes ``map.png``.

    For a single 2-D real-valued site, also the manifold (``manifold.png``, Kingma & Welling 2014, fig. 4):
    a ``grid`` x ``grid`` grid at the cell centres of the unit square mapped through the inverse CDF of the
    site's prior, decoded with any other latent site at its prior mean.
    """
    check_images(exp)
    check_count("points", points, 5)
    check_count("grid", grid, 2)
    methods = _methods(methods)
    x, y = points_of(exp, points)
    with seeded(seed):
        means = posterior_means(exp.model, exp.guide, x, y)
        sites = real_sites(exp, means, y if needs_labels(exp.model) else None)
        if not sites:
            raise ConfigError("the model has no real-valued latent site to map")
        codes = flatten_codes(means, sites)
        if codes.shape[1] < 2:
            raise ConfigError(f"the real-valued latent sites {sites} have 1 dimension in all: nothing to map in 2-D")
        out = LatentMap(sites, codes.cpu(), None if y is None else y.cpu(), {})
        if y is None:
            out.notes.append("the data set has no labels, so the map is uncoloured")
        axis_names = _fill_embeddings(out, methods, seed)
        out.paths.append(_draw_map(out, axis_names, Path(out_dir) / "map.png"))
        if codes.shape[1] == 2 and len(sites) == 1:
            try:
                label = None if decoding_labels(exp.model, y, "manifold") is None else y[:1]
                out.grid_codes, out.grid_images = _manifold(exp, means, sites[0], grid, label)
                if label is not None:
                    out.notes.append(f"the manifold is decoded with the label of test image 0, y = {int(label[0])}")
            except ConfigError as err:
                out.notes.append(f"no manifold grid: {err}")
        elif codes.shape[1] == 2:
            out.notes.append("no manifold grid: the 2 dimensions are in two latent sites")
    if out.grid_images is not None:
        out.paths.append(_draw_manifold(out, sites[0], Path(out_dir) / "manifold.png"))
    return out


def _fill_embeddings(out: LatentMap, methods: list[str], seed: int) -> dict[str, tuple[str, str]]:
    names = {}
    if out.codes.shape[1] == 2:
        out.embeddings["latent"] = out.codes.numpy()
        names["latent"] = tuple(f"{out.sites[0]}[{i}]" for i in range(2)) if len(out.sites) == 1 else tuple(out.sites)
        return names
    for method in methods:
        title = METHODS[method]
        out.embeddings[title], names[title] = _embed(out.codes.numpy().astype(np.float64), method, seed)
    return names


def _draw_map(out: LatentMap, axis_names: dict, path: Path) -> Path:
    what = "posterior means" if out.codes.shape[1] == 2 else f"posterior means ({out.codes.shape[1]}-D)"
    title = f"{what} of {out.codes.shape[0]} test points, " + ("coloured by label" if out.labels is not None
                                                                  else "uncoloured: the data set has no labels")
    labels = None if out.labels is None else out.labels.numpy()
    return scatter_panels(out.embeddings, axis_names, labels, title, path)


def _draw_manifold(out: LatentMap, site: str, path: Path) -> Path:
    n = out.grid_codes.shape[0]
    every = max(1, n // 5)
    def ticks(values: list[float]) -> list[str]:
        return [f"{v:.2f}" if i % every == 0 or i == n - 1 else "" for i, v in enumerate(values)]

    columns, rows = ticks(out.grid_codes[0, :, 0].tolist()), ticks(out.grid_codes[:, 0, 1].tolist())
    title = (f"the learned manifold: {site}[0] (columns) and {site}[1] (rows) at the prior's quantiles "
             f"{0.5 / n:.3f} ... {1 - 0.5 / n:.3f}, decoded")
    zoom = 1 if out.grid_images.shape[-1] >= 20 else 3
    return labelled_grid(list(out.grid_images), rows, columns, title, path, zoom=zoom)
