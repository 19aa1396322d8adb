"""Amortized guides q(z|x), chosen by name from :data:`GUIDES`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from pyro.nn import PyroModule

from ..nets import check_choice
from .normal import NormalGuide, NormalGuideConfig


class GuideEntry(NamedTuple):
    """A registry entry: the guide class, its config dataclass, and how to build it for a model."""

    cls: type[PyroModule]
    config_cls: type
    build: Callable[[PyroModule, Any], PyroModule]  # build(model, config) -> guide


def _spec_guide(model: PyroModule, config: Any) -> PyroModule:
    from .spec_guide import SpecGuide

    return SpecGuide.for_model(model, config)


def _spec_entry() -> GuideEntry:
    from ..spec import GuideSpec
    from .spec_guide import SpecGuide

    return GuideEntry(SpecGuide, GuideSpec, _spec_guide)


#: Registry of guides (``guide.name`` in configs).
GUIDES: dict[str, GuideEntry] = {
    "normal": GuideEntry(NormalGuide, NormalGuideConfig, lambda model, cfg: NormalGuide(model.x_shape, model.latent_dim, cfg)),
    "spec": _spec_entry(),
}


def make_guide(name: str, model: PyroModule, config: Any = None) -> PyroModule:
    """Build the guide ``name`` that pairs with ``model``."""
    check_choice("guide", name, GUIDES)
    entry = GUIDES[name]
    return entry.build(model, config if config is not None else entry.config_cls())


__all__ = ["GUIDES", "GuideEntry", "NormalGuide", "NormalGuideConfig", "make_guide"]
