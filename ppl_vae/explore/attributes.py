"""Attribute vectors: the mean code with an attribute minus the mean code without it, added to test images' codes.

An attribute is a class (``class:A:B``, from class A to class B; ``class:B``, B against the others), stroke
thickness measured from the pixels (:func:`stroke_thickness`), or any binary attribute given as a file of one
0 or 1 per test image (:func:`load_attribute_labels`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
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
)
from .figures import labelled_grid

__all__ = [
    "AttributeVector",
    "attribute_vector",
    "stroke_thickness",
    "load_attribute_labels",
    "default_class_pair",
    "class_groups",
    "Groups",
    "DEFAULT_STRENGTHS",
]

#: the strengths an attribute vector is added with, by default (0 is the reconstruction)
DEFAULT_STRENGTHS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


@documented
@dataclass
class AttributeVector:
    """What :func:`attribute_vector` drew: test images without the attribute, their codes plus the vector."""

    #: what the vector adds: ``class 1 -> 7``, ``class 7``, ``thickness`` or a labels file's name
    name: str
    #: how the points with and without the attribute were chosen
    description: str
    #: per real-valued latent site, mean code with the attribute minus mean code without ``{site: event}``
    vector: dict[str, torch.Tensor]
    #: per real-valued site, the mean code of the points with the attribute
    mean_with: dict[str, torch.Tensor]
    #: per real-valued site, the mean code of the points without it
    mean_without: dict[str, torch.Tensor]
    #: how many test points have the attribute
    num_with: int
    #: how many test points do not have it
    num_without: int
    #: the strengths s of code + s * vector, a column each
    strengths: torch.Tensor
    #: the test images shown, a row each (all without the attribute)
    indices: list[int]
    #: the codes decoded, ``{site: (rows, strengths, *event)}`` (discrete sites at each image's code)
    codes: dict[str, torch.Tensor]
    #: per row, the test image and then its code plus each strength of the vector, ``(rows, 1 + strengths, C, H, W)``
    images: torch.Tensor
    #: the PNG written
    path: Path | None = None


def stroke_thickness(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stroke thickness as a binary attribute measured from the pixels: ink relative to the class median.

    The **ink** of an image is its number of pixels above 0.5 (on binarized images: the pixels that are on).
    A digit is **thick** when its ink is strictly above the median ink of the images of its class among ``x``
    (``torch.median``: for an even count, the lower of the two middle values), or of all of ``x`` when ``y`` is
    None; otherwise it is thin. MNIST digits are scaled to fit a 20x20 box, so within a class the ink varies
    mostly with the width of the strokes; it also grows with a digit's size and with extra strokes (a crossed
    7), which this measure does not tell apart.

    :returns: the ink per image ``(N,)`` and whether it is thick ``(N,)`` (bool).
    """
    ink = (x.reshape(x.shape[0], -1) > 0.5).sum(-1)
    groups = torch.zeros_like(ink) if y is None else y.to(ink.device)
    thick = torch.zeros_like(ink, dtype=torch.bool)
    for value in groups.unique():
        members = groups == value
        thick[members] = ink[members] > ink[members].median()
    return ink, thick


def load_attribute_labels(path: str | os.PathLike, num_points: int) -> torch.Tensor:
    """A binary attribute per test image from a file: ``.npy`` (NumPy) or text (``.txt``, ``.csv``: numbers
    separated by white space or commas), one 0 or 1 per test image, in the test set's order.

    :raises DataError: for a missing or unreadable file, a count other than ``num_points``, or values other
        than 0 and 1.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=1)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read attribute labels from {path}: {str(err).splitlines()[0]}") from None
    values = np.asarray(values).reshape(-1)
    if values.shape[0] != num_points:
        raise DataError(f"{path} holds {values.shape[0]} attribute labels; the test set has {num_points} images "
                        "(one 0 or 1 each)")
    if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
        raise DataError(f"{path} must hold only 0 and 1 (one per test image), got values such as "
                        f"{np.unique(values)[:5].tolist()}")
    return torch.from_numpy(values.astype(bool))


def default_class_pair(y: torch.Tensor) -> tuple[int, int]:
    """The class pair of ``all``: 1 -> 7 when both classes are in ``y``, else its two smallest classes."""
    classes = y.unique().tolist()
    if 1 in classes and 7 in classes:
        return 1, 7
    if len(classes) < 2:
        raise ConfigError(f"a class vector needs two classes, and the test labels hold only {classes}")
    return int(classes[0]), int(classes[1])


@documented
class Groups(NamedTuple):
    """The test points with and without an attribute, and what to call it."""

    #: which points have the attribute ``(N,)`` (bool)
    with_: torch.Tensor
    #: which points do not have it ``(N,)`` (bool)
    without: torch.Tensor
    #: its name in titles: ``class 1 -> 7``, ``thickness``
    name: str
    #: its name in file names: ``class_1_to_7``, ``thickness``
    slug: str
    #: how the two groups were chosen, in words
    description: str


def class_groups(attribute: str, y: torch.Tensor | None) -> Groups:
    """The groups of a class attribute: ``class:A:B`` (with: class B, without: class A) or ``class:B`` (B
    against all other classes). Refused in one line for data without labels or a class no test image has."""
    if y is None:
        raise ConfigError("a class vector needs labels, and this data set has none; pass a file of 0/1 per test "
                          "image instead (--labels FILE)")
    try:
        classes = [int(c) for c in attribute.split(":")[1:]]
    except ValueError:
        classes = []
    if len(classes) not in (1, 2):
        raise ConfigError("a class attribute is 'class:B' (B against the others) or 'class:A:B' (from A to B), "
                          f"got {attribute!r}")
    missing = [c for c in classes if not bool((y == c).any())]
    if missing:
        raise ConfigError(f"no test image has the class {missing[0]}; the classes are {y.unique().tolist()}")
    if len(classes) == 1:
        (b,) = classes
        return Groups(y == b, y != b, f"class {b}", f"class_{b}",
                      f"mean code of class {b} minus the mean code of the other classes")
    a, b = classes
    return Groups(y == b, y == a, f"class {a} -> {b}", f"class_{a}_to_{b}",
                  f"mean code of class {b} minus the mean code of class {a}")


def _flags(attribute: Any, x: torch.Tensor) -> Groups:
    """The groups of a binary attribute given as a file or an array of one 0 or 1 per test point."""
    if isinstance(attribute, (str, os.PathLike)):
        flags = load_attribute_labels(attribute, x.shape[0])
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(attribute).stem)
        return Groups(flags, ~flags, Path(attribute).stem, slug,
                      f"labels from {Path(attribute).name}: mean code of the 1s minus that of the 0s")
    values = attribute.detach().cpu().numpy() if isinstance(attribute, torch.Tensor) else np.asarray(attribute)
    flags = torch.as_tensor(values).reshape(-1)
    if flags.shape[0] != x.shape[0] or not bool(((flags == 0) | (flags == 1)).all()):
        raise DataError(f"an attribute array needs one 0 or 1 per test image ({x.shape[0]}), got shape "
                        f"{tuple(flags.shape)}")
    return Groups(flags.bool(), ~flags.bool(), "attribute", "attribute",
                  "mean code of the points with the attribute minus that of those without")


def _groups(attribute: Any, x: torch.Tensor, y: torch.Tensor | None) -> Groups:
    if isinstance(attribute, str) and attribute.startswith("class:"):
        return class_groups(attribute, y)
    if isinstance(attribute, str) and attribute == "thickness":
        _, thick = stroke_thickness(x, y)
        scope = "its class" if y is not None else "all test images"
        return Groups(thick, ~thick, "thickness", "thickness",
                      f"thick: more pixels above 0.5 than the median of {scope}; mean code of thick minus thin digits")
    if isinstance(attribute, (str, os.PathLike, np.ndarray, torch.Tensor)):
        return _flags(attribute, x)
    raise ConfigError(f"attribute must be 'class:B', 'class:A:B', 'thickness', a labels file or an array, got {attribute!r}")


def attribute_vector(
    exp, out_dir: str | os.PathLike, attribute: Any = "class:1:7", *, strengths: Sequence[float] = DEFAULT_STRENGTHS,
    rows: int = 6, seed: int = 0,
) -> AttributeVector:
    """An attribute vector: the mean code of the test points with an attribute minus the mean code of those
    without it (per real-valued latent site), added at each of ``strengths`` to the codes of the first ``rows``
    test images without the attribute, and decoded. Writes ``attribute_<name>.png``.

    ``attribute``: ``"class:A:B"`` (from the mean code of class A to that of class B; the rows are images of
    A), ``"class:B"`` (class B against all others), ``"thickness"`` (:func:`stroke_thickness`: thick against
    thin digits, measured from the pixels), the path of a file of one 0 or 1 per test image
    (:func:`load_attribute_labels`), or such an array. Discrete latent sites keep each image's code.
    """
    check_images(exp)
    check_count("rows", rows)
    strengths_t = torch.as_tensor([float(s) for s in strengths])
    if strengths_t.numel() == 0:
        raise ConfigError("attribute_vector needs at least one strength")
    x, y = points_of(exp, None)
    groups = _groups(attribute, x, y)
    with_, without = groups.with_.to(x.device), groups.without.to(x.device)
    if not bool(with_.any()) or not bool(without.any()):
        raise ConfigError(f"attribute {groups.name!r}: {int(with_.sum())} test points have it and "
                          f"{int(without.sum())} do not; both groups need points")
    with seeded(seed):
        means = posterior_means(exp.model, exp.guide, x, y)
        labels = decoding_labels(exp.model, y, "attribute vector")
        sites = real_sites(exp, means, labels)
        if not sites:
            raise ConfigError("the model has no real-valued latent site to add a vector to")
        mean_with = {s: means[s][with_].mean(0) for s in sites}
        mean_without = {s: means[s][without].mean(0) for s in sites}
        vector = {s: mean_with[s] - mean_without[s] for s in sites}
        indices = without.nonzero().flatten()[:rows].tolist()
        codes = _shifted(means, indices, vector, strengths_t.to(x.device))
        row_labels = None if labels is None else labels[indices].repeat_interleave(strengths_t.numel())
        decoded = decode_images(exp, {k: v.reshape(-1, *v.shape[2:]) for k, v in codes.items()}, row_labels)
    decoded = decoded.reshape(len(indices), strengths_t.numel(), *exp.data.image_shape)
    images = torch.cat([data_pictures(x[indices], exp.data.image_shape).unsqueeze(1), decoded], 1)
    out = AttributeVector(groups.name, groups.description, vector, mean_with, mean_without, int(with_.sum()),
                          int(without.sum()), strengths_t, indices, codes, images)
    out.path = _draw_attribute(out, y, Path(out_dir) / f"attribute_{groups.slug}.png")
    return out


def _shifted(means: dict, indices: list[int], vector: dict, strengths: torch.Tensor) -> dict:
    """``{site: (rows, strengths, *event)}``: each image's code plus each strength of the vector."""
    out = {}
    for name, value in means.items():
        base = value[indices].unsqueeze(1)  # (rows, 1, *event)
        if name in vector:
            shape = (1, -1, *[1] * vector[name].dim())
            out[name] = base + strengths.reshape(shape) * vector[name].unsqueeze(0).unsqueeze(0)
        else:
            out[name] = base.expand(len(indices), strengths.numel(), *value.shape[1:]).clone()
    return out


def _draw_attribute(out: AttributeVector, y, path: Path) -> Path:
    rows = [f"test {i}" + ("" if y is None else f" ({int(y[i])})") for i in out.indices]
    columns = ["image"] + [f"{s:+g}" for s in out.strengths.tolist()]
    title = (f"attribute vector '{out.name}' ({out.description}; {out.num_with} with, {out.num_without} without), "
             "added to the codes of test images at each strength (0: the reconstruction)")
    return labelled_grid(list(out.images), rows, columns, title, path)
