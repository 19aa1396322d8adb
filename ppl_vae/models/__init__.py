"""Pyro models p(x|z)p(z), chosen by name from :data:`MODELS` (``model.name`` in configs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..nets import check_choice
from ..programs import FunctionProgram, PythonTarget, build_target, seeded
from ..schema import documented
from ..spec import ModelSpec
from .spec_model import SpecModel
from .vae import VAE, VAEConfig
from .vqvae import VQVAE, VQVAEConfig


@documented
@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: the model's config dataclass, how to build the model, and its class."""

    config_cls: type  #: the ``model:`` section's dataclass
    build: Callable[[tuple[int, ...], Any], nn.Module]  #: ``build(x_shape, config) -> model``
    cls: type | None = None  #: the class of the models it builds (None: any)
    config_of: Callable[[Any], Any] | None = None  #: a built model -> its config (for a run's config.yaml)


def _python_model(x_shape: tuple[int, ...], config: PythonTarget) -> nn.Module:
    built = build_target(config, "model", x_shape=tuple(x_shape))
    return built if isinstance(built, nn.Module) else FunctionProgram(built)


#: Registry of models.
MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAEConfig, lambda x_shape, config: VAE(x_shape, config), VAE, lambda m: m.config),
    "spec": ModelEntry(ModelSpec, lambda x_shape, spec: SpecModel(x_shape, spec), SpecModel, lambda m: m.spec),
    "python": ModelEntry(PythonTarget, _python_model),
    "vqvae": ModelEntry(VQVAEConfig, lambda x_shape, config: VQVAE(x_shape, config), VQVAE, lambda m: m.config),
}


def make_model(name: str, x_shape: tuple[int, ...], config: Any = None, *, seed: int | None = None) -> nn.Module:
    """Build the model ``name`` for observations of shape ``x_shape``.

    :param int seed: seeds the initialisation of its networks (the global RNGs are left as they were);
        None draws from the global RNGs.
    """
    check_choice("model", name, MODELS)
    entry = MODELS[name]
    with seeded(seed):
        return entry.build(tuple(x_shape), config if config is not None else entry.config_cls())


__all__ = ["MODELS", "ModelEntry", "SpecModel", "VAE", "VAEConfig", "VQVAE", "VQVAEConfig", "make_model"]
