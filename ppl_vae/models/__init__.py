"""Pyro models p(x|z)p(z), chosen by name from :data:`MODELS`."""

from __future__ import annotations

from typing import Any, NamedTuple

from pyro.nn import PyroModule

from ..nets import check_choice
from ..spec import ModelSpec
from .spec_model import SpecModel
from .vae import VAE, VAEConfig


class ModelEntry(NamedTuple):
    """A registry entry: the model class and its config dataclass."""

    cls: type[PyroModule]
    config_cls: type


#: Registry of models (``model.name`` in configs).
MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAE, VAEConfig),
    "spec": ModelEntry(SpecModel, ModelSpec),
}


def make_model(name: str, x_shape: tuple[int, ...], config: Any = None) -> PyroModule:
    """Build the model ``name`` for observations of shape ``x_shape``."""
    check_choice("model", name, MODELS)
    entry = MODELS[name]
    return entry.cls(x_shape, config if config is not None else entry.config_cls())


__all__ = ["MODELS", "ModelEntry", "SpecModel", "VAE", "VAEConfig", "make_model"]
