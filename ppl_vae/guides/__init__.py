"""Amortized guides q(z|x), chosen by name from :data:`GUIDES`."""

from __future__ import annotations

from typing import Any, NamedTuple

from pyro.nn import PyroModule

from ..nets import check_choice
from .normal import NormalGuide, NormalGuideConfig


class GuideEntry(NamedTuple):
    """A registry entry: the guide class and its config dataclass."""

    cls: type[PyroModule]
    config_cls: type


#: Registry of guides (``guide.name`` in configs).
GUIDES: dict[str, GuideEntry] = {
    "normal": GuideEntry(NormalGuide, NormalGuideConfig),
}


def make_guide(name: str, model: PyroModule, config: Any = None) -> PyroModule:
    """Build the guide ``name`` that pairs with ``model`` (same x shape and latent size)."""
    check_choice("guide", name, GUIDES)
    entry = GUIDES[name]
    return entry.cls(model.x_shape, model.latent_dim, config if config is not None else entry.config_cls())


__all__ = ["GUIDES", "GuideEntry", "NormalGuide", "NormalGuideConfig", "make_guide"]
