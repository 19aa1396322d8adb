"""The registry of guide heads (the ``head`` of a guide factor, and ``compare-guides --heads``).

========== =========================================== ============================== =================
head       q(latent | context)                         stands in for model families   argument
========== =========================================== ============================== =================
normal     diagonal Normal                             any real-valued family
laplace    diagonal Laplace                            any real-valued family
fullcov    full-covariance Normal (Cholesky factor)    any real-valued family
iaf        Normal pushed through IAF steps             any real-valued family         ``:K`` steps (2)
planar     Normal pushed through planar steps          any real-valued family         ``:K`` steps (4)
radial     Normal pushed through radial steps          any real-valued family         ``:K`` steps (4)
spline     Normal pushed through spline steps          any real-valued family         ``:K`` steps (2)
delta      a point mass (deterministic encoder, MAP code) any real-valued family
bernoulli  independent Bernoulli                       bernoulli
categorical, onehot_categorical, relaxed_categorical   the same family
========== =========================================== ============================== =================

The table is built here, explicitly, from the head modules; no module registers itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..families import FAMILIES, MIN_SCALE, Family
from ..registry import Arg, int_arg, parse_arguments, split_name, syntax
from ..schema import documented
from .base import DeltaHead, Head, ParamHead
from .flows import FLOW_STEPS, FlowHead, make_flow_steps
from .fullcov import FullCovHead

__all__ = ["HEADS", "HeadEntry", "Head", "ParamHead", "DeltaHead", "FlowHead", "FullCovHead", "make_head", "parse_head"]


@documented
@dataclass(frozen=True)
class HeadEntry:
    """A registry entry: how to build the head, and which model families it may stand in for."""

    build: Callable[..., Head]  #: ``build(context_dim, dim, temperature=, min_scale=, **arguments) -> Head``
    accepts: Callable[[Family], bool]  #: may this head be the guide of a latent of this family?
    args: tuple[Arg, ...] = ()  #: positional arguments after the colon
    summary: str = ""  #: one line, for listings

    @property
    def real(self) -> bool:
        """Whether the head is a density over real vectors (it may stand in for any real-valued family)."""
        return self.accepts(FAMILIES["normal"])


def _family_head(name: str) -> HeadEntry:
    family = FAMILIES[name]

    def build(context_dim: int, dim: int, temperature: float = 0.5, min_scale: float = MIN_SCALE) -> Head:
        return ParamHead(context_dim, dim, family, temperature, min_scale)

    if family.real_support:
        return HeadEntry(build, lambda f: f.real_support, summary=f"diagonal {name}")
    return HeadEntry(build, lambda f, name=name: f.name == name, summary=f"{name}, for {name} latents")


def _fullcov(context_dim: int, dim: int, temperature: float = 0.5, min_scale: float = MIN_SCALE) -> Head:
    return FullCovHead(context_dim, dim, min_scale)


def _flow(name: str) -> HeadEntry:
    def build(context_dim: int, dim: int, temperature: float = 0.5, min_scale: float = MIN_SCALE, num_steps: int | None = None) -> Head:
        return FlowHead(context_dim, dim, make_flow_steps(name, context_dim, dim, num_steps), min_scale)

    return HeadEntry(build, lambda f: f.real_support, (int_arg("num_steps", "K"),), f"{name} flow, K steps (default {FLOW_STEPS[name][1]})")


#: Registry of guide heads.
HEADS: dict[str, HeadEntry] = {
    **{name: _family_head(name) for name in FAMILIES},
    "fullcov": HeadEntry(_fullcov, lambda f: f.real_support, summary="full-covariance Normal"),
    **{name: _flow(name) for name in FLOW_STEPS},
    "delta": HeadEntry(
        lambda context_dim, dim, temperature=0.5, min_scale=MIN_SCALE: DeltaHead(context_dim, dim),
        lambda f: f.real_support, summary="point mass: a deterministic encoder (MAP code)",
    ),
}


def parse_head(text: Any) -> tuple[str, dict[str, Any]]:
    """Split ``"iaf:4"`` into ``("iaf", {"num_steps": 4})``.

    :raises ValueError: for an unknown head or an argument it does not take, naming the choices.
    """
    name, positional, keywords = split_name(text, "guide head", HEADS)
    if keywords:
        raise ValueError(f"guide head {name!r} takes no key=value options, got {text!r}")
    return name, parse_arguments(text, "guide head", name, HEADS[name].args, positional, {})


def head_syntax(name: str) -> str:
    """``iaf[:K]`` for help texts."""
    return syntax(name, HEADS[name].args)


def make_head(text: str, context_dim: int, dim: int, temperature: float = 0.5, min_scale: float = MIN_SCALE) -> Head:
    """Build the head named ``text`` (e.g. ``"normal"``, ``"iaf:4"``)."""
    name, arguments = parse_head(text)
    return HEADS[name].build(context_dim, dim, temperature=temperature, min_scale=min_scale, **arguments)
