"""Latent traversals: decode a sweep of each of the most used latent units, the others held fixed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..programs import seeded
from ..schema import documented
from .codes import (
    Unit,
    check_count,
    check_images,
    decode_images,
    decoding_labels,
    latent_units,
    points_of,
    posterior_means,
    prior_means,
    prior_trace,
    unit_scores,
)
from .figures import labelled_grid

__all__ = ["Traversal", "traverse"]


@documented
@dataclass
class Traversal:
    """What :func:`traverse` drew: a row per latent unit, a column per step of its sweep."""

    #: the rows' units: ``z[3]`` for coordinate 3 of site z, ``c`` for a whole categorical site
    units: list[str]
    #: per row, how much the unit is used (KL(q||p) per dimension, or the variance of its posterior mean)
    scores: list[float]
    #: the measure of ``scores``: ``kl`` or ``variance`` (see :func:`ppl_vae.explore.codes.unit_scores`)
    measure: str
    #: what the sweeps are centred on: ``test image I`` or ``prior mean``
    base: str
    #: the code swept around, ``{site: (1, *event)}``
    base_codes: dict[str, torch.Tensor]
    #: per row, the values the unit takes: base + t * prior sd for t from -span to +span, or the categories
    values: list[torch.Tensor]
    #: per row, the codes decoded, ``{site: (steps, *event)}``
    codes: list[dict[str, torch.Tensor]]
    #: per row, the decoded images ``(steps, C, H, W)``
    images: list[torch.Tensor]
    #: the PNG written
    path: Path | None = None


def _prior_sd(trace, unit: Unit) -> float:
    fn = trace.nodes[unit.site]["fn"]
    try:
        sd = fn.stddev
    except NotImplementedError:
        raise ConfigError(
            f"a traversal sweeps prior standard deviations, and the prior of latent site {unit.site!r} "
            f"({type(fn).__name__}) has no closed-form standard deviation"
        ) from None
    return float(sd.reshape(-1)[unit.index])


def _sweep(trace, base_codes: dict, unit: Unit, steps: int, span: float) -> tuple[torch.Tensor, dict]:
    """The values of ``unit`` along its sweep, and the codes: the base code with the unit set to each value."""
    base = base_codes[unit.site]
    if unit.index is None:  # a whole categorical or simplex-valued site: each category in turn
        values = unit.values.to(base.dtype)
        n, site_value = values.shape[0], values
    else:
        if unit.values is not None:
            values = unit.values.to(base.dtype)
        else:
            centre = float(base.reshape(-1)[unit.index])
            values = centre + torch.linspace(-span, span, steps, device=base.device) * _prior_sd(trace, unit)
        n = values.shape[0]
        site_value = base.reshape(1, -1).repeat(n, 1)
        site_value[:, unit.index] = values
        site_value = site_value.reshape(n, *base.shape[1:])
    codes = {name: value.expand(n, *value.shape[1:]).clone() for name, value in base_codes.items()}
    codes[unit.site] = site_value
    return values, codes


def _base_code(exp, means: dict, base: str, index: int, y) -> tuple[dict, str, torch.Tensor | None]:
    label = None if y is None else y[index : index + 1]
    if base == "image":
        return {k: v[index : index + 1] for k, v in means.items()}, f"test image {index}", label
    if base == "prior":
        codes = prior_means(exp.model, list(means), exp.data.x_shape, label)
        return codes, "prior mean" + ("" if label is None else f" (label of test image {index})"), label
    raise ConfigError(f"base must be 'image' or 'prior', got {base!r}")


def traverse(
    exp, out_dir: str | os.PathLike, *, base: str = "image", index: int = 0, top_k: int | None = 10,
    steps: int = 11, span: float = 3.0, sites: Sequence[str] | None = None, points: int = 1000, seed: int = 0,
) -> Traversal:
    """Latent traversals: for each of the ``top_k`` most used latent units (all with None), decode a sweep of
    that unit from -``span`` to +``span`` prior standard deviations around a code, the other units held fixed.

    The code is test image ``index``'s posterior mean (``base="image"``) or the prior's mean (``"prior"``); the
    prior's standard deviation is that of the model's prior of the site given its parents at that code. A
    discrete unit sweeps its values: a categorical or simplex-valued site is one row (each category, or each
    vertex of the simplex), shown above the ``top_k`` ranked rows; a Bernoulli coordinate is ranked like a real
    one. Units are ranked on the first ``points`` test points by KL(q||p) per dimension, in closed form where the
    guide's and the prior's distributions have one (a diagonal Normal guide and prior), else by the variance over
    the points of the posterior mean (see :func:`ppl_vae.explore.codes.unit_scores`). ``sites`` restricts the rows
    to some latent sites (in a hierarchical model, a top site swept with its children held fixed changes
    nothing). A model that decodes with a label gets that of test image ``index``. Writes ``traverse.png``.
    """
    check_images(exp)
    check_count("steps", steps, 2)
    check_count("points", points)
    if top_k is not None:
        check_count("top_k", top_k)
    if not (isinstance(span, (int, float)) and 0 < span < float("inf")):
        raise ConfigError(f"span must be a positive number of standard deviations, got {span!r}")
    x, y = points_of(exp, max(points, index + 1))
    if not 0 <= index < x.shape[0]:
        raise ConfigError(f"index must be a test image between 0 and {x.shape[0] - 1}, got {index}")
    with seeded(seed):
        means = posterior_means(exp.model, exp.guide, x, y)
        unknown = sorted(set(sites or ()) - set(means))
        if unknown:
            raise ConfigError(f"sites {unknown} are not latent sites of the guide; its latent sites are {list(means)}")
        labels = decoding_labels(exp.model, y, "traversal")
        base_codes, described, label = _base_code(exp, means, base, index, labels)
        trace = prior_trace(exp.model, base_codes, exp.data.x_shape, label)
        units = latent_units(trace, [s for s in means if not sites or s in sites])
        scores, measure = unit_scores(exp.model, exp.guide, x[:points], None if y is None else y[:points], units,
                                      {k: v[:points] for k, v in means.items()})
        whole = [i for i, unit in enumerate(units) if unit.index is None]  # a categorical site: one row, always
        ranked = sorted((i for i, unit in enumerate(units) if unit.index is not None), key=lambda i: -float(scores[i]))
        chosen = whole + ranked[: top_k or len(units)]
        out = Traversal([units[i].label for i in chosen], [float(scores[i]) for i in chosen], measure, described,
                        base_codes, [], [], [])
        for i in chosen:
            values, codes = _sweep(trace, base_codes, units[i], steps, span)
            out.values.append(values)
            out.codes.append(codes)
            out.images.append(decode_images(exp, codes, None if label is None else label.expand(values.shape[0])))
    out.path = _draw_traversal(out, steps, span, Path(out_dir) / "traverse.png")
    return out


def _draw_traversal(t: Traversal, steps: int, span: float, path: Path) -> Path:
    short = "KL" if t.measure == "kl" else "var"
    rows = []
    for unit, score, values in zip(t.units, t.scores, t.values):
        swept = f"{unit}: its {len(values)} values" if len(values) != steps or values.dim() > 1 else unit
        rows.append(f"{swept}  ({short} {score:.2f})" if math.isfinite(score) else swept)
    columns = [f"{round(v, 6) + 0.0:+.1f}" for v in torch.linspace(-span, span, steps).tolist()]
    around = f"the code of {t.base}" if t.base.startswith("test") else f"the {t.base}"
    discrete = " (a discrete unit: each of its values)" if any(len(v) != steps or v.dim() > 1 for v in t.values) else ""
    ranking = "KL(q||p) per dimension" if t.measure == "kl" else "the variance of the posterior mean"
    title = (f"traversals around {around}: each row sweeps one unit from -{span:g} to +{span:g} prior sd{discrete}, "
             f"the others fixed; rows ranked by {ranking}")
    return labelled_grid(t.images, rows, columns, title, path)
