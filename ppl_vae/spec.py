"""Declarative latent-variable models: a spec, in Python or YAML, that compiles to a Pyro model and guide.

A :class:`ModelSpec` declares

- ``latents``: each with a distribution family, a size, and the parents a network maps to its parameters
  (no parents: a fixed or learned prior);
- ``inputs``: conditioning inputs that are always given (the label ``y`` of a conditional VAE);
- ``observed``: the data ``x``, its likelihood (from :data:`ppl_vae.likelihoods.LIKELIHOODS`), its parents
  and its decoder network.

A latent with ``observed_when_given: true`` (it must be named ``y``) is observed in batches that carry labels
and latent otherwise, as the label of the semi-supervised M2 model.

A :class:`GuideSpec` declares, for each latent, the guide family (a head from
:data:`ppl_vae.guides.heads.HEADS`, such as ``normal``, ``fullcov`` or ``iaf:4``) and what it conditions on:
``x``, the always-given inputs, and other latents. For example ``q(y|x) q(z|x,y)``.

In YAML, the spec is the ``model:`` and ``guide:`` sections of a config with ``name: spec``::

    model:
      name: spec
      latents:
        - {name: z, family: normal, dim: 8}
      observed: {likelihood: bernoulli, parents: [z], net: {hidden_dims: [128]}}
    guide:
      name: spec
      factors:
        - {name: z, family: normal, conditions_on: [x], net: {hidden_dims: [128]}}

:func:`validate_spec` checks a model spec and a guide spec together, and every error names the variable at
fault; :func:`compile_spec` returns the two ``PyroModule``s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError
from .families import FAMILIES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS

__all__ = [
    "NetSpec",
    "LatentSpec",
    "InputSpec",
    "ObservedSpec",
    "ModelSpec",
    "GuideFactorSpec",
    "GuideSpec",
    "SpecError",
    "validate_model_spec",
    "validate_spec",
    "model_order",
    "guide_order",
    "compile_spec",
]

NET_KINDS = ("mlp", "conv")
INPUT_KINDS = ("categorical", "real")
PRIORS = ("fixed", "learned")


class SpecError(ConfigError):
    """An invalid model or guide spec; the message names the variable at fault."""


@dataclass(frozen=True)
class NetSpec:
    """A network mapping the concatenated parents to distribution parameters."""

    kind: str = "mlp"  # mlp | conv (conv: an image encoder in a guide, an image decoder for x)
    hidden_dims: tuple[int, ...] = (200,)  # sizes of the fully connected hidden layers
    activation: str = "relu"  # a key of ppl_vae.nets.ACTIVATIONS
    channels: tuple[int, ...] = (32, 64)  # conv: channels of the stride-2 layers, largest image first


@dataclass(frozen=True)
class LatentSpec:
    """A latent variable of the model."""

    name: str  # the sample site's name
    family: str = "normal"  # a key of ppl_vae.families.FAMILIES
    dim: int = 2  # size of the variable (number of categories for categorical)
    parents: tuple[str, ...] = ()  # latents or inputs a network maps to this variable's parameters
    net: NetSpec = field(default_factory=NetSpec)  # that network (unused without parents)
    prior: str = "fixed"  # without parents: fixed (standard) or learned parameters
    temperature: float = 0.5  # relaxed_categorical: the Gumbel-softmax temperature
    observed_when_given: bool = False  # observed when the batch has labels y (must be named y), latent otherwise
    enumerate: bool = False  # discrete and absent from the guide: enumerate it in the model (TraceEnum_ELBO)


@dataclass(frozen=True)
class InputSpec:
    """A conditioning input that is always given (the batch's labels ``y``)."""

    name: str = "y"  # must be y: the data's labels
    kind: str = "categorical"  # categorical (class index, one-hot encoded) | real (a vector)
    dim: int = 10  # number of classes, or the vector's size


@dataclass(frozen=True)
class ObservedSpec:
    """The observed variable ``x``."""

    name: str = "x"  # must be x: the data
    likelihood: str = "bernoulli"  # a key of ppl_vae.likelihoods.LIKELIHOODS
    parents: tuple[str, ...] = ("z",)  # latents or inputs the decoder reads
    net: NetSpec = field(default_factory=NetSpec)  # the decoder
    x_scale: float = 0.1  # normal likelihoods: fixed or initial scale
    allow_nonbinary: bool = False  # let a bernoulli likelihood see grey levels (improper; opt-in)


@dataclass(frozen=True)
class ModelSpec:
    """A generative model p(x, latents | inputs) (the ``model:`` section with ``name: spec``)."""

    latents: tuple[LatentSpec, ...] = (LatentSpec("z", dim=20),)  # the latent variables
    observed: ObservedSpec = field(default_factory=ObservedSpec)  # the data x
    inputs: tuple[InputSpec, ...] = ()  # conditioning inputs that are always given


@dataclass(frozen=True)
class GuideFactorSpec:
    """One factor q(latent | conditions) of the guide."""

    name: str  # the model latent this factor covers
    family: str = "normal"  # a guide head (ppl_vae.guides.heads.HEADS), e.g. normal, fullcov, iaf:4
    conditions_on: tuple[str, ...] = ("x",)  # x, inputs and other latents
    net: NetSpec = field(default_factory=NetSpec)  # maps the conditions to the head's context
    enumerate: bool = False  # discrete: enumerate this site in the guide (TraceEnum_ELBO)


@dataclass(frozen=True)
class GuideSpec:
    """An amortized guide (the ``guide:`` section with ``name: spec``)."""

    factors: tuple[GuideFactorSpec, ...] = (GuideFactorSpec("z"),)  # one per latent, in any order


# -- validation ---------------------------------------------------------------------------------


def _check_net(net: NetSpec, owner: str) -> None:
    if net.kind not in NET_KINDS:
        raise SpecError(f"{owner}: unknown network kind {net.kind!r}; expected one of {list(NET_KINDS)}")
    if net.activation not in ACTIVATIONS:
        raise SpecError(f"{owner}: unknown activation {net.activation!r}; expected one of {sorted(ACTIVATIONS)}")
    for size in (*net.hidden_dims, *net.channels):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise SpecError(f"{owner}: network sizes must be positive ints, got {size!r}")


def _toposort(nodes: dict[str, tuple[str, ...]], what: str) -> list[str]:
    """Order ``nodes`` (name -> parents among nodes) so parents come first; refuse cycles."""
    order, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = path[path.index(name) :] + [name]
            raise SpecError(f"{what} has a cycle through variable {name!r}: {' -> '.join(cycle)}")
        state[name] = "active"
        for parent in nodes[name]:
            if parent in nodes:
                visit(parent, path + [name])
        state[name] = "done"
        order.append(name)

    for name in nodes:
        visit(name, [])
    return order


def validate_model_spec(spec: ModelSpec) -> None:
    """Check a model spec on its own; :class:`SpecError` naming the variable at fault."""
    if not spec.latents:
        raise SpecError("model spec declares no latent variables")
    names = [v.name for v in spec.latents] + [i.name for i in spec.inputs]
    for name in names:
        if names.count(name) > 1:
            raise SpecError(f"variable {name!r} is declared more than once")
        if name in ("x", "data"):
            raise SpecError(f"variable {name!r}: the names 'x' and 'data' are reserved for the data and its plate")
    for inp in spec.inputs:
        if inp.name != "y":
            raise SpecError(f"input {inp.name!r}: an always-given input must be named 'y' (the data's labels)")
        if inp.kind not in INPUT_KINDS:
            raise SpecError(f"input {inp.name!r}: unknown kind {inp.kind!r}; expected one of {list(INPUT_KINDS)}")
        if inp.dim < 1:
            raise SpecError(f"input {inp.name!r}: dim must be a positive int, got {inp.dim!r}")
    for v in spec.latents:
        if v.family not in FAMILIES:
            raise SpecError(f"latent {v.name!r}: unknown family {v.family!r}; expected one of {sorted(FAMILIES)}")
        if not isinstance(v.dim, int) or v.dim < 1:
            raise SpecError(f"latent {v.name!r}: dim must be a positive int, got {v.dim!r}")
        if v.prior not in PRIORS:
            raise SpecError(f"latent {v.name!r}: prior must be one of {list(PRIORS)}, got {v.prior!r}")
        for parent in v.parents:
            if parent not in names:
                raise SpecError(f"latent {v.name!r}: unknown parent {parent!r}; declared variables: {names}")
        _check_net(v.net, f"latent {v.name!r}")
        if v.parents and v.net.kind == "conv":
            raise SpecError(f"latent {v.name!r}: a conv network maps to images; use kind: mlp for a latent")
        if v.observed_when_given:
            if v.name != "y":
                raise SpecError(f"latent {v.name!r}: observed_when_given needs the name 'y' (the data's labels)")
            if FAMILIES[v.family].name not in ("categorical", "onehot_categorical", "relaxed_categorical"):
                raise SpecError(f"latent {v.name!r}: observed_when_given needs a categorical family, got {v.family!r}")
            if spec.inputs:
                raise SpecError(f"latent {v.name!r}: a spec cannot have both an input y and a semi-observed y")
        if v.enumerate and not FAMILIES[v.family].discrete:
            raise SpecError(f"latent {v.name!r}: only discrete latents can be enumerated, got family {v.family!r}")
        if not v.temperature > 0:
            raise SpecError(f"latent {v.name!r}: temperature must be > 0, got {v.temperature!r}")
    _toposort({v.name: v.parents for v in spec.latents}, "the model")
    obs = spec.observed
    if obs.name != "x":
        raise SpecError(f"observed variable {obs.name!r}: the observed variable must be named 'x'")
    if obs.likelihood not in LIKELIHOODS:
        raise SpecError(f"observed variable 'x': unknown likelihood {obs.likelihood!r}; expected one of {sorted(LIKELIHOODS)}")
    if not obs.parents:
        raise SpecError("observed variable 'x' has no parents; it must depend on at least one latent")
    for parent in obs.parents:
        if parent not in names:
            raise SpecError(f"observed variable 'x': unknown parent {parent!r}; declared variables: {names}")
    if not obs.x_scale > 0:
        raise SpecError(f"observed variable 'x': x_scale must be > 0, got {obs.x_scale!r}")
    _check_net(obs.net, "observed variable 'x'")


def validate_spec(model: ModelSpec, guide: GuideSpec) -> None:
    """Check a model spec and a guide spec together; :class:`SpecError` naming the variable at fault."""
    from .guides.heads import HEADS, parse_head_name

    validate_model_spec(model)
    latents = {v.name: v for v in model.latents}
    inputs = {i.name for i in model.inputs}
    covered = {}
    for factor in guide.factors:
        if factor.name not in latents:
            raise SpecError(
                f"guide factor {factor.name!r}: the model has no latent {factor.name!r}; model latents: {sorted(latents)}"
            )
        if factor.name in covered:
            raise SpecError(f"guide factor {factor.name!r} is declared more than once")
        covered[factor.name] = factor
        latent = latents[factor.name]
        try:
            head_name, _ = parse_head_name(factor.family)
        except ValueError as err:
            raise SpecError(f"guide factor {factor.name!r}: {err}") from None
        family = FAMILIES[latent.family]
        if not HEADS[head_name].accepts(family):
            raise SpecError(
                f"guide factor {factor.name!r}: guide family {factor.family!r} cannot stand in for the model's "
                f"{latent.family!r} latent (their supports or event shapes differ)"
            )
        if latent.enumerate:
            raise SpecError(f"guide factor {factor.name!r}: latent {factor.name!r} is enumerated in the model, so the guide must not cover it")
        if factor.enumerate and not family.discrete:
            raise SpecError(f"guide factor {factor.name!r}: only discrete latents can be enumerated")
        if not factor.conditions_on:
            raise SpecError(f"guide factor {factor.name!r} conditions on nothing; an amortized guide needs x")
        for cond in factor.conditions_on:
            if cond != "x" and cond not in latents and cond not in inputs:
                raise SpecError(
                    f"guide factor {factor.name!r}: unknown variable {cond!r} in conditions_on; "
                    f"expected x, inputs {sorted(inputs)} or latents {sorted(latents)}"
                )
            if cond == factor.name:
                raise SpecError(f"guide factor {factor.name!r} conditions on itself")
        _check_net(factor.net, f"guide factor {factor.name!r}")
        if factor.net.kind == "conv" and "x" not in factor.conditions_on:
            raise SpecError(f"guide factor {factor.name!r}: a conv network reads images, so it must condition on x")
    for name, latent in latents.items():
        if name not in covered and not latent.enumerate:
            raise SpecError(
                f"latent {name!r} is not covered by the guide; add a guide factor for it"
                + (" or set enumerate: true to sum it out in the model" if FAMILIES[latent.family].discrete else "")
            )
    guide_order(model, guide)


def model_order(spec: ModelSpec) -> list[str]:
    """Latent names in an order where parents come first."""
    return _toposort({v.name: v.parents for v in spec.latents}, "the model")


def guide_order(model: ModelSpec, guide: GuideSpec) -> list[str]:
    """Guide factor names in an order where conditioning latents come first."""
    factors = {f.name: tuple(c for c in f.conditions_on if c != "x") for f in guide.factors}
    return _toposort(factors, "the guide")


def compile_spec(model: ModelSpec, guide: GuideSpec, x_shape: tuple[int, ...]):
    """Validate and compile a spec into ``(model, guide)`` PyroModules for data items of shape ``x_shape``."""
    from .guides.spec_guide import SpecGuide
    from .models.spec_model import SpecModel

    validate_spec(model, guide)
    compiled = SpecModel(x_shape, model)
    return compiled, SpecGuide.for_model(compiled, guide)


def default_guide(model: ModelSpec, net: Optional[NetSpec] = None, family: str = "normal") -> GuideSpec:
    """A guide that conditions every latent on x alone: q(v|x) for each latent v, of ``family`` where real.

    Used when a config declares a spec model without a guide section.
    """
    validate_model_spec(model)
    net = net or NetSpec()
    factors = []
    for v in model.latents:
        if v.enumerate:
            continue
        fam = family if FAMILIES[v.family].real_support else v.family
        factors.append(GuideFactorSpec(v.name, fam, ("x",), net))
    return GuideSpec(tuple(factors))
