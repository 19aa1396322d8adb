"""Declarative latent-variable models: the schema of a spec, in Python or YAML.

A :class:`ModelSpec` declares

- ``latents``: each with a distribution family, a size, and the parents a network maps to its parameters
  (no parents: a fixed or learned prior);
- ``inputs``: conditioning inputs that are always given (the label ``y`` of a conditional VAE);
- ``observed``: the data ``x``, its likelihood (from :data:`ppl_vae.likelihoods.LIKELIHOODS`), its parents
  and its decoder network.

A latent with ``observed_when_given: true`` (it must be named ``y``) is observed in batches that carry labels
and latent otherwise, as the label of the semi-supervised M2 model.

A :class:`GuideSpec` declares, for each latent, the guide head (from :data:`ppl_vae.heads.HEADS`, such as
``normal``, ``fullcov`` or ``iaf:4``) and what it conditions on: ``x``, the always-given inputs, and other
latents. For example ``q(y|x) q(z|x,y)``.

In YAML, the spec is the ``model:`` and ``guide:`` sections of a config with ``name: spec``::

    model:
      name: spec
      latents:
        - {name: z, family: normal, dim: 8}
      observed: {likelihood: bernoulli, parents: [z], net: {hidden_dims: [128]}}
    guide:
      name: spec
      factors:
        - {name: z, head: normal, conditions_on: [x], net: {hidden_dims: [128]}}

This module is the schema only. Every dataclass checks itself where it is built, and every error names
the variable at fault; :func:`check_guide` checks a guide spec against its model spec. The compiler
is :func:`ppl_vae.compile.compile_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .contract import DATA_PLATE, DATA_SITE
from .errors import ConfigError
from .families import FAMILIES, PRIOR_SHAPES
from .heads import HEADS, parse_head
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .pixelcnn import PixelCNNConfig
from .schema import documented

__all__ = [
    "NetSpec",
    "LatentSpec",
    "InputSpec",
    "ObservedSpec",
    "ModelSpec",
    "GuideFactorSpec",
    "GuideSpec",
    "SpecError",
    "check_guide",
    "model_order",
    "guide_order",
    "default_guide",
]

NET_KINDS = ("mlp", "conv")
INPUT_KINDS = ("categorical", "real")
PRIORS = ("fixed", "learned")
#: families over a number of categories, for which ``dim`` is that number (at least 2)
CATEGORICAL_FAMILIES = ("categorical", "onehot_categorical", "relaxed_categorical")
#: the default Gumbel-softmax temperature of a ``relaxed_categorical`` latent
DEFAULT_TEMPERATURE = 0.5
#: the guide factor field renamed to ``head`` (configs that still use it get a pointed message)
RENAMED = {"family": "head"}


class SpecError(ConfigError):
    """An invalid model or guide spec; the message names the variable at fault."""


def _positive_int(owner: str, key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{owner}: {key} must be a positive int, got {value!r}")


@documented
@dataclass(frozen=True)
class NetSpec:
    """A network mapping the concatenated parents to distribution parameters."""

    #: mlp | conv (conv: an image encoder in a guide, an image decoder for x)
    kind: str = "mlp"
    #: sizes of the fully connected hidden layers
    hidden_dims: tuple[int, ...] = (200,)
    #: a key of ppl_vae.nets.ACTIVATIONS
    activation: str = "relu"
    #: conv: channels of the stride-2 layers, largest image first
    channels: tuple[int, ...] = (32, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.kind not in NET_KINDS:
            raise SpecError(f"network: unknown kind {self.kind!r}; expected one of {list(NET_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"network: unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        for size in (*self.hidden_dims, *self.channels):
            _positive_int("network", "sizes", size)


@documented
@dataclass(frozen=True)
class LatentSpec:
    """A latent variable of the model."""

    #: the sample site's name
    name: str
    #: a key of ppl_vae.families.FAMILIES
    family: str = "normal"
    #: size of the variable (number of categories for categorical families, at least 2)
    dim: int = 2
    #: latents or inputs a network maps to this variable's parameters
    parents: tuple[str, ...] = ()
    #: that network (only with parents)
    net: NetSpec = field(default_factory=NetSpec)
    #: without parents: fixed (standard) or learned prior parameters, or a shaped prior of a 2-D normal latent
    #: (a key of ppl_vae.families.PRIOR_SHAPES: mixture_circle, swiss_roll)
    prior: str = "fixed"
    #: relaxed_categorical only: the Gumbel-softmax temperature; null: 0.5
    temperature: float | None = None
    #: observed when the batch has labels y (must be named y), latent otherwise
    observed_when_given: bool = False
    #: discrete and absent from the guide: enumerate it in the model (needs the enum estimator)
    enumerate: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        owner = f"latent {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"a latent needs a non-empty name, got {self.name!r}")
        if self.name in (DATA_SITE, DATA_PLATE):
            raise SpecError(f"{owner}: the names {DATA_SITE!r} and {DATA_PLATE!r} are reserved for the data and its plate")
        if self.family not in FAMILIES:
            raise SpecError(f"{owner}: unknown family {self.family!r}; expected one of {sorted(FAMILIES)}")
        _positive_int(owner, "dim", self.dim)
        if self.family in CATEGORICAL_FAMILIES and self.dim < 2:
            raise SpecError(f"{owner}: a {self.family} latent needs dim >= 2 categories, got {self.dim}")
        if self.prior not in PRIORS and self.prior not in PRIOR_SHAPES:
            raise SpecError(f"{owner}: prior must be one of {list(PRIORS) + sorted(PRIOR_SHAPES)}, got {self.prior!r}")
        if self.prior in PRIOR_SHAPES:
            self._check_shaped_prior(owner)
        if self.prior == "learned" and self.parents:
            raise SpecError(f"{owner}: prior: learned applies to a latent without parents; its network already learns p({self.name}|parents)")
        if self.temperature is not None:
            if self.family != "relaxed_categorical":
                raise SpecError(f"{owner}: temperature applies to relaxed_categorical latents only, not {self.family!r}")
            if not self.temperature > 0:
                raise SpecError(f"{owner}: temperature must be > 0, got {self.temperature!r}")
        if self.parents and self.net.kind == "conv":
            raise SpecError(f"{owner}: a conv network maps to images; use kind: mlp for a latent")
        if self.observed_when_given:
            if self.name != "y":
                raise SpecError(f"{owner}: observed_when_given needs the name 'y' (the data's labels)")
            if self.family not in CATEGORICAL_FAMILIES:
                raise SpecError(f"{owner}: observed_when_given needs a categorical family, got {self.family!r}")
        if self.enumerate and not FAMILIES[self.family].discrete:
            raise SpecError(f"{owner}: only discrete latents can be enumerated, got family {self.family!r}")

    def _check_shaped_prior(self, owner: str) -> None:
        shape = PRIOR_SHAPES[self.prior]
        if self.family != "normal" or self.parents or self.dim != shape.dim:
            raise SpecError(
                f"{owner}: prior {self.prior!r} is a fixed prior over a {shape.dim}-D real latent: it needs family normal, "
                f"dim {shape.dim} and no parents, got family {self.family!r}, dim {self.dim}, parents {list(self.parents)}"
            )

    @property
    def gumbel_temperature(self) -> float:
        """The temperature a relaxed family uses (the default when none is set)."""
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature


@documented
@dataclass(frozen=True)
class InputSpec:
    """A conditioning input that is always given (the batch's labels ``y``)."""

    #: must be y: the data's labels
    name: str = "y"
    #: categorical (class index, one-hot encoded) | real (a vector)
    kind: str = "categorical"
    #: number of classes, or the vector's size
    dim: int = 10

    def __post_init__(self) -> None:
        owner = f"input {self.name!r}"
        if self.name != "y":
            raise SpecError(f"{owner}: an always-given input must be named 'y' (the data's labels)")
        if self.kind not in INPUT_KINDS:
            raise SpecError(f"{owner}: unknown kind {self.kind!r}; expected one of {list(INPUT_KINDS)}")
        _positive_int(owner, "dim", self.dim)


@documented
@dataclass(frozen=True)
class ObservedSpec:
    """The observed variable ``x``."""

    #: must be x: the data
    name: str = DATA_SITE
    #: a key of ppl_vae.likelihoods.LIKELIHOODS
    likelihood: str = "bernoulli"
    #: latents or inputs the decoder reads
    parents: tuple[str, ...] = ("z",)
    #: the decoder
    net: NetSpec = field(default_factory=NetSpec)
    #: normal likelihoods: the fixed or initial scale
    x_scale: float = 0.1
    #: let a bernoulli likelihood see grey levels (improper; opt-in)
    allow_nonbinary: bool = False
    #: the network of a pixelcnn likelihood (ppl_vae.pixelcnn.PixelCNNConfig)
    pixelcnn: PixelCNNConfig = field(default_factory=PixelCNNConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        if self.likelihood == "pixelcnn" and self.net.kind == "conv" and self.pixelcnn.condition != "spatial":
            raise SpecError("observed variable 'x': a conv decoder draws a map; set pixelcnn.condition: spatial")
        if self.name != DATA_SITE:
            raise SpecError(f"observed variable {self.name!r}: the observed variable must be named {DATA_SITE!r}")
        if self.likelihood not in LIKELIHOODS:
            raise SpecError(f"observed variable 'x': unknown likelihood {self.likelihood!r}; expected one of {sorted(LIKELIHOODS)}")
        if not self.parents:
            raise SpecError("observed variable 'x' has no parents; it must depend on at least one latent")
        if not self.x_scale > 0:
            raise SpecError(f"observed variable 'x': x_scale must be > 0, got {self.x_scale!r}")


def _toposort(nodes: dict[str, tuple[str, ...]], what: str) -> list[str]:
    """Order ``nodes`` (name -> parents among nodes) so parents come first; refuse cycles."""
    order: list[str] = []
    state: dict[str, str] = {}

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


@documented
@dataclass(frozen=True)
class ModelSpec:
    """A generative model p(x, latents | inputs) (the ``model:`` section with ``name: spec``)."""

    #: the latent variables
    latents: tuple[LatentSpec, ...] = (LatentSpec("z", dim=20),)
    #: the data x
    observed: ObservedSpec = field(default_factory=ObservedSpec)
    #: conditioning inputs that are always given
    inputs: tuple[InputSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "latents", tuple(self.latents))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.latents:
            raise SpecError("model spec declares no latent variables")
        names = [v.name for v in self.latents] + [i.name for i in self.inputs]
        for name in names:
            if names.count(name) > 1:
                raise SpecError(f"variable {name!r} is declared more than once")
        for v in self.latents:
            for parent in v.parents:
                if parent not in names:
                    raise SpecError(f"latent {v.name!r}: unknown parent {parent!r}; declared variables: {names}")
            if v.observed_when_given and self.inputs:
                raise SpecError(f"latent {v.name!r}: a spec cannot have both an input y and a semi-observed y")
        for parent in self.observed.parents:
            if parent not in names:
                raise SpecError(f"observed variable 'x': unknown parent {parent!r}; declared variables: {names}")
        _toposort({v.name: v.parents for v in self.latents}, "the model")
        used = set(self.observed.parents).union(*(v.parents for v in self.latents))
        for v in self.latents:
            if v.name not in used:
                raise SpecError(
                    f"latent {v.name!r} is a parent of nothing (neither of x nor of another latent), so it cannot "
                    "change the model; add it to the parents of x or of a latent, or remove it"
                )


@documented
@dataclass(frozen=True)
class GuideFactorSpec:
    """One factor q(latent | conditions) of the guide."""

    #: the model latent this factor covers
    name: str
    #: a guide head (ppl_vae.heads.HEADS), e.g. normal, fullcov, iaf:4
    head: str = "normal"
    #: x, inputs and other latents
    conditions_on: tuple[str, ...] = ("x",)
    #: maps the conditions to the head's context
    net: NetSpec = field(default_factory=NetSpec)
    #: discrete: enumerate this site in the guide (TraceEnum_ELBO)
    enumerate: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions_on", tuple(self.conditions_on))
        owner = f"guide factor {self.name!r}"
        try:
            parse_head(self.head)
        except ValueError as err:
            raise SpecError(f"{owner}: {err}") from None
        if not self.conditions_on:
            raise SpecError(f"{owner} conditions on nothing; an amortized guide needs x")
        if self.name in self.conditions_on:
            raise SpecError(f"{owner} conditions on itself")
        if self.net.kind == "conv" and DATA_SITE not in self.conditions_on:
            raise SpecError(f"{owner}: a conv network reads images, so it must condition on x")


@documented
@dataclass(frozen=True)
class GuideSpec:
    """An amortized guide (the ``guide:`` section with ``name: spec``)."""

    #: one per latent, in any order
    factors: tuple[GuideFactorSpec, ...] = (GuideFactorSpec("z"),)

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(self.factors))
        names = [f.name for f in self.factors]
        for name in names:
            if names.count(name) > 1:
                raise SpecError(f"guide factor {name!r} is declared more than once")
        guide_order(self)


def _check_factor(factor: GuideFactorSpec, model: ModelSpec) -> None:
    latents = {v.name: v for v in model.latents}
    inputs = {i.name for i in model.inputs}
    owner = f"guide factor {factor.name!r}"
    if factor.name not in latents:
        raise SpecError(f"{owner}: the model has no latent {factor.name!r}; model latents: {sorted(latents)}")
    latent = latents[factor.name]
    family = FAMILIES[latent.family]
    head_name, _ = parse_head(factor.head)
    if not HEADS[head_name].accepts(family):
        raise SpecError(
            f"{owner}: guide head {factor.head!r} cannot stand in for the model's {latent.family!r} latent "
            "(their supports or event shapes differ)"
        )
    if latent.enumerate:
        raise SpecError(f"{owner}: latent {factor.name!r} is enumerated in the model, so the guide must not cover it")
    if factor.enumerate and not family.discrete:
        raise SpecError(f"{owner}: only discrete latents can be enumerated")
    for cond in factor.conditions_on:
        if cond != DATA_SITE and cond not in latents and cond not in inputs:
            raise SpecError(
                f"{owner}: unknown variable {cond!r} in conditions_on; expected x, inputs {sorted(inputs)} "
                f"or latents {sorted(latents)}"
            )


def check_guide(model: ModelSpec, guide: GuideSpec) -> None:
    """Check a guide spec against its model spec; :class:`SpecError` naming the variable at fault.

    Each spec has already checked itself when it was built; this checks what needs both: every factor
    covers a model latent with a head that can stand in for its family, and every latent that is not
    enumerated in the model is covered.
    """
    for factor in guide.factors:
        _check_factor(factor, model)
    covered = {f.name for f in guide.factors}
    for latent in model.latents:
        if latent.name not in covered and not latent.enumerate:
            raise SpecError(
                f"latent {latent.name!r} is not covered by the guide; add a guide factor for it"
                + (" or set enumerate: true to sum it out in the model" if FAMILIES[latent.family].discrete else "")
            )


def model_order(spec: ModelSpec) -> list[str]:
    """Latent names in an order where parents come first."""
    return _toposort({v.name: v.parents for v in spec.latents}, "the model")


def guide_order(guide: GuideSpec) -> list[str]:
    """Guide factor names in an order where conditioning latents come first."""
    factors = {f.name: tuple(c for c in f.conditions_on if c != DATA_SITE) for f in guide.factors}
    return _toposort(factors, "the guide")


def default_guide(model: ModelSpec, net: NetSpec | None = None, head: str = "normal") -> GuideSpec:
    """A guide that conditions every latent on x alone: q(v|x) for each latent v, with ``head`` where real.

    Used when a config declares a spec model without a guide section.
    """
    net = net or NetSpec()
    factors = []
    for v in model.latents:
        if v.enumerate:
            continue
        chosen = head if FAMILIES[v.family].real_support else v.family
        factors.append(GuideFactorSpec(v.name, chosen, (DATA_SITE,), net))
    return GuideSpec(tuple(factors))
