"""Amortized guides q(z|x), chosen by name from :data:`GUIDES` (``guide.name`` in configs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..contract import HasXShape, capability, needs_labels
from ..errors import ConfigError
from ..nets import check_choice
from ..programs import FunctionProgram, PythonTarget, build_target, seeded
from ..schema import documented
from ..spec import GuideSpec
from .amortized import AmortizedGuide, AmortizedGuideConfig, LatentSite, latent_sites
from .corruption import CorruptedGuide, CorruptionConfig
from .penalties import ContractiveConfig, SparsityConfig
from .spec_guide import SpecGuide
from ..models.vqvae import VQVAEGuide, VQVAEGuideConfig


@documented
@dataclass(frozen=True)
class GuideEntry:
    """A registry entry: the guide's config dataclass, how to build it for a model, and its class."""

    config_cls: type  #: the ``guide:`` section's dataclass
    build: Callable[..., nn.Module]  #: ``build(model, config, x, y) -> guide``, with an example batch ``(x, y)``
    cls: type | None = None  #: the class of the guides it builds (None: any)
    config_of: Callable[[Any], Any] | None = None  #: a built guide -> its config (for a run's config.yaml)


def _amortized(model: Any, config: AmortizedGuideConfig, x: torch.Tensor, y: torch.Tensor | None) -> nn.Module:
    return AmortizedGuide(tuple(x.shape[1:]), latent_sites(model, x, y), config)


def _python_guide(model: Any, config: PythonTarget, x: torch.Tensor, y: torch.Tensor | None) -> nn.Module:
    built = build_target(config, "guide", model=model, x_shape=tuple(x.shape[1:]))
    if isinstance(built, nn.Module):
        return built
    return FunctionProgram(built, model.scope if isinstance(model, FunctionProgram) else None)


#: Registry of guides.
GUIDES: dict[str, GuideEntry] = {
    "amortized": GuideEntry(AmortizedGuideConfig, _amortized, AmortizedGuide, lambda g: g.config),
    "spec": GuideEntry(GuideSpec, lambda model, spec, x, y: SpecGuide.for_model(model, spec), SpecGuide, lambda g: g.spec),
    "python": GuideEntry(PythonTarget, _python_guide),
    "vqvae": GuideEntry(VQVAEGuideConfig, lambda model, config, x, y: VQVAEGuide(model, config), VQVAEGuide, lambda g: g.config),
}

#: guide names of earlier versions, and what replaced them
RENAMED_GUIDES = {"normal": "amortized (with head: normal, the default)"}


def example_batch(model: Any, x_shape: tuple[int, ...] | None = None, num_points: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of zeros to trace ``model`` on, with labels 0 for a model that needs them."""
    if x_shape is None:
        declared = capability(model, HasXShape)
        if declared is None:
            raise ConfigError(
                "building a registry guide needs the shape of one observation: pass x_shape= or an example batch x=, "
                "or give the model an x_shape attribute"
            )
        x_shape = tuple(declared.x_shape)
    params = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    x = torch.zeros((num_points, *x_shape), device=device)
    y = torch.zeros(num_points, dtype=torch.long, device=device) if needs_labels(model) else None
    return x, y


def make_guide(
    name: str,
    model: Any,
    config: Any = None,
    *,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    x_shape: tuple[int, ...] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build the guide ``name`` that pairs with ``model``.

    Registry guides read the model's latent sites from a trace of the model on an example batch: ``x``
    (and ``y``) when given, else zeros of shape ``x_shape`` (or the model's own ``x_shape``).

    :param int seed: seeds the initialisation of its networks (the global RNGs are left as they were).
    """
    if name in RENAMED_GUIDES:
        raise ConfigError(f"guide {name!r} was renamed {RENAMED_GUIDES[name]}")
    check_choice("guide", name, GUIDES)
    entry = GUIDES[name]
    if x is None:
        x, y = example_batch(model, x_shape)
    with seeded(seed):
        return entry.build(model, config if config is not None else entry.config_cls(), x, y)


__all__ = [
    "GUIDES",
    "GuideEntry",
    "AmortizedGuide",
    "AmortizedGuideConfig",
    "LatentSite",
    "SpecGuide",
    "CorruptedGuide",
    "CorruptionConfig",
    "SparsityConfig",
    "ContractiveConfig",
    "example_batch",
    "latent_sites",
    "make_guide",
]
