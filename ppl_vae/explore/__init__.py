"""Looking inside a trained model: latent traversals, interpolations, a latent map and attribute vectors.

Each view takes an :class:`~ppl_vae.experiment.Experiment` (from :func:`~ppl_vae.experiment.load_run` or
:func:`~ppl_vae.experiment.fit_experiment`) and an output folder (``ppl-vae explore`` uses ``RUN/explore``),
writes one PNG there (two for the map of a 2-D latent) and returns what it shows as a small dataclass: the
codes used and the images drawn, so that a figure can be checked or redrawn.

.. code-block:: python

    exp = ppl_vae.load_run("runs/vae_mnist_2d", device="cpu")
    t = traverse(exp, "runs/vae_mnist_2d/explore", top_k=2)
    t.images[0].shape   # (11, 1, 28, 28): the first unit's sweep

Codes are posterior means (see :mod:`ppl_vae.explore.codes`); pictures are the means of p(x|z). The views work for
any model and guide of the contract (:mod:`ppl_vae.contract`), spec or hand-written, with any number of latent
sites; a view that cannot be drawn for a model or data set (a class vector without labels, a model of codes
rather than images) raises :class:`~ppl_vae.errors.ConfigError` with one line that says why. Everything runs
on the device the experiment is on, and a CPU is enough.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..schema import documented
from .attributes import (
    DEFAULT_STRENGTHS,
    AttributeVector,
    attribute_vector,
    class_groups,
    default_class_pair,
    load_attribute_labels,
    stroke_thickness,
)
from .codes import check_images, decode, points_of, posterior_means, slerp
from .interpolation import Interpolation, interpolate
from .maps import LatentMap, latent_map
from .traversal import Traversal, traverse

__all__ = [
    "Traversal",
    "Interpolation",
    "LatentMap",
    "AttributeVector",
    "Exploration",
    "traverse",
    "interpolate",
    "latent_map",
    "attribute_vector",
    "explore_all",
    "stroke_thickness",
    "load_attribute_labels",
    "default_class_pair",
    "posterior_means",
    "decode",
    "slerp",
    "DEFAULT_STRENGTHS",
]


@documented
@dataclass
class Exploration:
    """What :func:`explore_all` drew, and the views it skipped with the reason."""

    #: each view's result by name (``traverse``, ``interpolate``, ``map``, ``attribute class 1 -> 7``, ...)
    views: dict[str, Any] = field(default_factory=dict)
    #: the PNGs written
    paths: list[Path] = field(default_factory=list)
    #: the views that could not be drawn for this run, each with the reason
    skipped: list[str] = field(default_factory=list)
    #: what the drawn views left out (from the map's notes)
    notes: list[str] = field(default_factory=list)


def explore_all(exp, out_dir: str | os.PathLike, *, seed: int = 0) -> Exploration:
    """Every view with its defaults: the traversal, the interpolations, the map (and manifold), the class vector
    of :func:`default_class_pair` (when the data have labels) and the thickness vector. A view that cannot be
    drawn for this run is skipped, with the reason, and the others are still drawn."""
    check_images(exp)
    _, y = points_of(exp, None)
    jobs = [("traverse", lambda: traverse(exp, out_dir, seed=seed)),
            ("interpolate", lambda: interpolate(exp, out_dir, seed=seed)),
            ("map", lambda: latent_map(exp, out_dir, seed=seed))]
    if y is None:
        jobs.append(("attribute class", lambda: class_groups("class:1:7", None)))  # raises: says why
    else:
        jobs.append(("attribute class", lambda: attribute_vector(exp, out_dir, "class:{}:{}".format(*default_class_pair(y)),
                                                                 seed=seed)))
    jobs.append(("attribute thickness", lambda: attribute_vector(exp, out_dir, "thickness", seed=seed)))
    out = Exploration()
    for name, job in jobs:
        try:
            result = job()
        except ConfigError as err:
            out.skipped.append(f"{name}: {err}")
            continue
        out.views[f"attribute {result.name}" if isinstance(result, AttributeVector) else name] = result
        out.paths += result.paths if isinstance(result, LatentMap) else [result.path]
        out.notes += getattr(result, "notes", [])
    return out
