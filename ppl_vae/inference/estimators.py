"""The registry of ELBO estimators, chosen by name (``estimator.name`` in configs).

Every entry is a Pyro ELBO object; :func:`make_estimator` builds one from an
:class:`EstimatorConfig`. ``fit`` calls ``loss_and_grads`` on it, which every
Pyro ELBO (including TraceGraph_ELBO) provides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError
from ..nets import check_choice

__all__ = ["ESTIMATORS", "EstimatorConfig", "check_estimator", "make_estimator"]


@dataclass(frozen=True)
class EstimatorConfig:
    """Which gradient estimator trains the model (the ``estimator:`` section)."""

    name: str = "trace"  # a key of ESTIMATORS
    num_particles: int = 1  # Monte-Carlo samples of the bound per data point and step
    vectorize_particles: bool = True  # draw the particles in one vectorized pass
    max_plate_nesting: int = 1  # plates in the model; the particle plate goes left of them

    def __post_init__(self) -> None:
        check_choice("estimator", self.name, ESTIMATORS)
        if not isinstance(self.num_particles, int) or self.num_particles < 1:
            raise ValueError(f"estimator.num_particles must be a positive int, got {self.num_particles!r}")
        if not isinstance(self.max_plate_nesting, int) or self.max_plate_nesting < 1:
            raise ValueError(f"estimator.max_plate_nesting must be a positive int, got {self.max_plate_nesting!r}")


def _pyro_elbo(cls: type[ELBO]) -> Callable[[EstimatorConfig], ELBO]:
    def build(config: EstimatorConfig) -> ELBO:
        return cls(
            num_particles=config.num_particles,
            vectorize_particles=config.vectorize_particles,
            max_plate_nesting=config.max_plate_nesting,
        )

    build.__doc__ = f"Build :class:`pyro.infer.{cls.__name__}` from an EstimatorConfig."
    return build


#: Registry of estimators: name -> builder taking an EstimatorConfig.
ESTIMATORS: dict[str, Callable[[EstimatorConfig], ELBO]] = {
    "trace": _pyro_elbo(Trace_ELBO),
    "meanfield": _pyro_elbo(TraceMeanField_ELBO),
}


def make_estimator(config: EstimatorConfig | str | ELBO | None = None) -> ELBO:
    """Return an ELBO object for a config, a registry name, or an ELBO (passed through)."""
    if isinstance(config, ELBO):
        return config
    if config is None:
        config = EstimatorConfig()
    elif isinstance(config, str):
        config = EstimatorConfig(name=config)
    return ESTIMATORS[config.name](config)


def check_estimator(elbo: ELBO, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Refuse, before training, an estimator that cannot handle the guide's sample sites.

    Traces the guide once on a couple of data points. A discrete site that is
    neither enumerated nor reparameterizable gets no gradient from the
    pathwise estimators (``trace``, ``meanfield``): :class:`ConfigError` names it.
    """
    if not isinstance(elbo, (Trace_ELBO, TraceMeanField_ELBO)):
        return
    with torch.no_grad(), pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x, y)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if not getattr(site["fn"], "has_rsample", False) and site["infer"].get("enumerate") is None:
            raise ConfigError(
                f"estimator {type(elbo).__name__} cannot train the discrete guide site {name!r}: its samples "
                "carry no pathwise gradient. Use estimator.name: tracegraph (score function with baselines), "
                "enum (exact enumeration) or a relaxed_categorical latent"
            )
