"""Experiment configs: YAML in, typed frozen dataclasses out.

A config file has one section per component::

    data:      DataConfig        (ppl_vae.data)
    model:     name + the model's config dataclass (ppl_vae.models.MODELS)
    guide:     name + the guide's config dataclass (ppl_vae.guides.GUIDES)
    estimator: name + the estimator's options (ppl_vae.inference.estimators.ESTIMATORS)
    optim:     OptimConfig       (ppl_vae.inference.training)
    train:     TrainConfig       (ppl_vae.inference.training)
    eval:      EvalConfig        (ppl_vae.inference.evaluate)
    kl_weighting: KLWeighting    (ppl_vae.inference.objectives: beta-VAE, KL annealing, free bits)
    semi_supervised: SemiSupervisedConfig (ppl_vae.inference.semisup: M2 with a few labels)
    adversarial: AdversarialConfig (ppl_vae.inference.adversarial: an adversarial autoencoder; present = enabled)
    m1:        a nested config (model, guide, estimator, optim, train, ...) of an M1 VAE trained
               first; the main model then trains on its latent codes (M1+M2, ppl_vae.stages)
    stack:     StackConfig       (ppl_vae.stacked: a stacked autoencoder, trained layer by layer, then
               fine-tuned; it sets model and guide, which the config then leaves out)
    prior:     CodePriorConfig   (ppl_vae.models.code_prior: a VQ-VAE's learned PixelCNN prior over its codes,
               trained as a second stage in RUN/prior; present = enabled)
    run:       RunConfig         (below)

``model``, ``guide`` and ``estimator`` are chosen by ``name`` from their registry, and the section's
other keys are that entry's config. A model or guide written in Python is ``name: python`` with a
``target`` (see :class:`~ppl_vae.programs.PythonTarget`).

Every key is checked where it enters: an unknown key, a value of the wrong type or an invalid value
raises :class:`~ppl_vae.errors.ConfigError` naming ``section.key``, the expected and the actual value.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .data import DataConfig
from .errors import ConfigError
from .guides import GUIDES, RENAMED_GUIDES
from .inference.adversarial import AdversarialConfig
from .inference.estimators import ESTIMATORS, EstimatorConfig
from .inference.evaluate import EvalConfig
from .inference.objectives import KLWeighting
from .inference.semisup import SemiSupervisedConfig
from .inference.training import OptimConfig, TrainConfig
from .models import MODELS
from .models.code_prior import CodePriorConfig
from .schema import as_mapping, documented, parse_dataclass
from .spec import RENAMED, SpecError, check_guide, default_guide
from .stacked import StackConfig, deep_guide_config, deep_model_config

__all__ = [
    "ComponentConfig",
    "ExperimentConfig",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "override_config",
    "read_yaml",
    "yaml_problem",
]


@documented
@dataclass(frozen=True)
class RunConfig:
    """Where runs go (the ``run:`` section)."""

    #: parent folder of run directories
    out_dir: str = "runs"
    #: run directory name; None: <config name>-<timestamp>
    name: str | None = None
    #: set when ppl_vae.fit was called from Python on data passed as a tensor, which the CLI cannot reload
    python_data: bool = False
    #: set when ppl_vae.fit was called from Python with an estimator outside the registry (what it was);
    #: such a run is evaluated and sampled from the CLI, but resumed from Python only
    hand_built_estimator: str | None = None


@documented
@dataclass(frozen=True)
class ComponentConfig:
    """A registry entry chosen by ``name`` with that entry's config dataclass."""

    #: registry key
    name: str
    #: the entry's frozen config dataclass
    config: Any


def _default_model() -> ComponentConfig:
    return ComponentConfig("vae", MODELS["vae"].config_cls())


def _default_guide() -> ComponentConfig:
    return ComponentConfig("amortized", GUIDES["amortized"].config_cls())


@documented
@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what :func:`ppl_vae.experiment.build_experiment` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ComponentConfig = field(default_factory=_default_model)
    guide: ComponentConfig = field(default_factory=_default_guide)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kl_weighting: KLWeighting = field(default_factory=KLWeighting)
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)
    #: an adversarial autoencoder: the KL replaced by a discriminator's game (None: off)
    adversarial: AdversarialConfig | None = None
    #: M1+M2: the M1 stage, trained first on the same data
    m1: "ExperimentConfig | None" = None
    #: a stacked autoencoder: its layers and stages (None: off); model and guide follow from it
    stack: StackConfig | None = None
    #: a VQ-VAE's learned prior over its codes, trained after it (None: off; samples draw codes uniformly)
    prior: CodePriorConfig | None = None
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        spec_model, spec_guide = self.model.name == "spec", self.guide.name == "spec"
        if spec_guide and not spec_model:
            raise ConfigError("a spec guide (guide.name: spec) needs a spec model (model.name: spec)")
        if spec_model and spec_guide:
            check_guide(self.model.config, self.guide.config)
        if (self.model.name == "vqvae") != (self.guide.name == "vqvae"):
            raise ConfigError(
                f"a vqvae model and the vqvae guide (its deterministic quantiser) go together: got model "
                f"{self.model.name!r} with guide {self.guide.name!r}; set model.name and guide.name both to vqvae"
            )
        if self.prior is not None and self.model.name != "vqvae":
            raise ConfigError(f"a prior: section trains a PixelCNN prior over a VQ-VAE's codes; model {self.model.name!r} "
                              "has none (set model.name: vqvae, or remove the prior section)")
        if self.stack is not None:
            clashes = [name for name, on in (("m1", self.m1 is not None), ("adversarial", self.adversarial is not None),
                                             ("semi_supervised", self.semi_supervised.enabled)) if on]
            if clashes:
                raise ConfigError(f"a stack: config (a stacked autoencoder) takes no {' or '.join(clashes)} section; remove it")


_PLAIN_SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "kl_weighting": KLWeighting,
    "semi_supervised": SemiSupervisedConfig,
    "adversarial": AdversarialConfig,
    "prior": CodePriorConfig,
    "run": RunConfig,
}
_REGISTRY_SECTIONS = {"model": MODELS, "guide": GUIDES}
SECTIONS = (
    "data", "model", "guide", "estimator", "kl_weighting", "semi_supervised", "adversarial", "m1", "stack", "prior", "optim", "train", "eval",
    "run",
)
#: sections an ``m1:`` stage may not have: it shares the data, and is itself unsupervised
_NOT_IN_M1 = ("data", "semi_supervised", "m1", "stack", "prior", "run")


def _mapping(section: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {raw!r}")
    return dict(raw)


def _parse_component(section: str, raw: Any) -> ComponentConfig:
    registry = _REGISTRY_SECTIONS[section]
    raw = _mapping(section, raw)
    name = raw.pop("name", "vae" if section == "model" else "amortized")
    if section == "guide" and name in RENAMED_GUIDES:
        raise ConfigError(f"guide.name {name!r} was renamed {RENAMED_GUIDES[name]}")
    if name not in registry:
        raise ConfigError(f"unknown {section}.name {name!r}; expected one of {sorted(registry)}")
    return ComponentConfig(name, parse_dataclass(registry[name].config_cls, raw, section, renamed=RENAMED))


def _parse_estimator(raw: Any) -> EstimatorConfig:
    raw = _mapping("estimator", raw)
    name = raw.pop("name", "trace")
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator.name {name!r}; expected one of {sorted(ESTIMATORS)}")
    options = parse_dataclass(ESTIMATORS[name].options_cls, raw, "estimator")
    return EstimatorConfig(name, options)


def _parse_m1(raw: Any) -> "ExperimentConfig":
    if not isinstance(raw, dict):
        raise ConfigError(f"section 'm1' must be a mapping of sections (model, guide, train, ...), got {raw!r}")
    for key in raw:
        if key in _NOT_IN_M1:
            raise ConfigError(f"m1.{key}: the M1 stage shares the main config's {key!r}; remove it from m1")
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"in section m1: {err}") from None


def _parse_stack(raw: dict) -> dict[str, Any]:
    """The ``stack`` section, and the deep model and guide that follow from it."""
    for key in ("model", "guide"):
        if raw.get(key) is not None:
            raise ConfigError(f"a stack: config derives {key} from stack.layers (ppl_vae.stacked); remove the {key} section")
    stack = parse_dataclass(StackConfig, raw["stack"], "stack")
    return {"stack": stack, "model": ComponentConfig("vae", deep_model_config(stack)),
            "guide": ComponentConfig("amortized", deep_guide_config(stack))}


def _check_sections(raw: dict) -> None:
    for key in raw:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown section {key!r}{hint}; valid sections: {', '.join(SECTIONS)}")


def config_from_dict(raw: Any) -> ExperimentConfig:
    """Parse a config mapping (as read from YAML) into an :class:`ExperimentConfig`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    _check_sections(raw)
    kwargs: dict[str, Any] = {}
    for section, cls in _PLAIN_SECTIONS.items():
        if section in raw:
            kwargs[section] = parse_dataclass(cls, raw[section], section)
    for section in _REGISTRY_SECTIONS:
        if section in raw:
            kwargs[section] = _parse_component(section, raw[section])
    if "estimator" in raw:
        kwargs["estimator"] = _parse_estimator(raw["estimator"])
    if raw.get("m1") is not None:
        kwargs["m1"] = _parse_m1(raw["m1"])
    if raw.get("stack") is not None:
        kwargs.update(_parse_stack(raw))
    model = kwargs.get("model")
    if model is not None and model.name == "spec" and "guide" not in kwargs:
        kwargs["guide"] = ComponentConfig("spec", default_guide(model.config))
    try:
        return ExperimentConfig(**kwargs)
    except SpecError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def config_to_dict(config: ExperimentConfig) -> dict:
    """The fully resolved config as plain YAML-able values (inverse of :func:`config_from_dict`)."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        value = getattr(config, section)
        if section in ("adversarial", "stack", "prior") and value is None:
            continue  # off: the section is absent
        if section in ("model", "guide") and config.stack is not None:
            continue  # they follow from the stack section
        if section == "m1":
            if value is not None:
                out[section] = {k: v for k, v in config_to_dict(value).items() if k not in _NOT_IN_M1}
        elif isinstance(value, ComponentConfig):
            out[section] = {"name": value.name, **as_mapping(value.config)}
        elif isinstance(value, EstimatorConfig):
            out[section] = {"name": value.name, **as_mapping(value.options)}
        else:
            out[section] = as_mapping(value)
    return out


# -- --set overrides ----------------------------------------------------------------------------


def _child(node: Any, key: str, where: str, item: str) -> tuple[Any, Any]:
    """The container ``node`` and the key into it at which ``key`` points (an index or a ``name`` in a list)."""
    if isinstance(node, list):
        if key.lstrip("-").isdigit():
            index = int(key)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"--set {item!r}: {where} has {len(node)} items, so there is no item {index}")
            return node, index
        names = [entry.get("name") for entry in node if isinstance(entry, dict)]
        if key not in names:
            raise ConfigError(f"--set {item!r}: {where} has no item named {key!r}; its items: {names} (or an index)")
        return node, names.index(key)
    if isinstance(node, dict):
        return node, key
    raise ConfigError(f"--set {item!r}: {where} is {node!r}, not a mapping or a list, so it has no key {key!r}")


def _default_at(defaults: Any, parts: list[str]) -> Any:
    """The value at ``parts`` in the resolved defaults, or an empty mapping where there is none."""
    node = defaults
    for key in parts:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, list) and key in [e.get("name") for e in node if isinstance(e, dict)]:
            node = next(e for e in node if isinstance(e, dict) and e.get("name") == key)
        else:
            return {}
    return copy.deepcopy(node) if isinstance(node, (dict, list)) else {}


def _set_path(raw: dict, parts: list[str], value: Any, item: str, defaults: Any) -> None:
    node: Any = raw
    for depth, key in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        container, index = _child(node, key, ".".join(parts[:depth]) or "the config", item)
        if isinstance(container, dict) and container.get(index) is None:
            if depth == 0 and key == "m1":
                raise ConfigError(f"--set {item!r}: this config has no m1 section (only M1+M2 configs do)")
            # a part of the config left to its defaults: start from them, so that list items are there by name
            container[index] = _default_at(defaults, parts[: depth + 1])
        node = container[index]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {item!r}: {where} is {node!r}, not a mapping or a list")
    container, index = _child(node, parts[-1], ".".join(parts[:-1]), item)
    container[index] = value


def apply_overrides(raw: dict, overrides: Sequence[str], defaults: dict | None = None) -> dict:
    """Apply ``path=value`` overrides (values parsed as YAML) to a raw config mapping; the input is not changed.

    A path reaches any field: ``train.epochs=5``, ``model.latents.z.dim=16`` (a list item by its
    ``name``), ``guide.factors.0.head=iaf:2`` (or by index), ``m1.train.epochs=100`` (the M1 stage).

    :param dict defaults: the fully resolved config (:func:`config_to_dict`); a path into a part that
        ``raw`` leaves to its defaults starts from them. Without it, that part starts empty.
    """
    raw = copy.deepcopy(raw or {})
    for item in overrides:
        path, sep, text = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 2 or not all(p.strip() for p in parts):
            raise ConfigError(f"--set expects section.key=value (any depth: model.latents.z.dim=16), got {item!r}")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}")
        if parts[0] == "m1" and len(parts) > 2 and parts[1] in _NOT_IN_M1:
            valid = [s for s in SECTIONS if s not in _NOT_IN_M1]
            raise ConfigError(f"--set {item!r}: unknown m1 section {parts[1]!r}; valid: {', '.join(valid)}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: cannot parse the value {text!r} as YAML: {yaml_problem(err)}") from None
        _set_path(raw, [p.strip() for p in parts], value, item, defaults)
    return raw


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong, and where (line and column, counted from 1)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = err.problem or err.context or "syntax error"
        if err.context and err.problem:
            start = err.context_mark
            elsewhere = start is not None and (start.line, start.column) != (mark.line, mark.column)
            problem += f" ({err.context}" + (f" at line {start.line + 1}, column {start.column + 1})" if elsewhere else ")")
        return line + " ".join(problem.split())
    return " ".join(str(err).split())


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file; :class:`ConfigError` if it is missing, unreadable, malformed, or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.reader.ReaderError):
        raise ConfigError(f"config file {path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(err)}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (data:, model:, train:, ...), "
            f"but its top level is a {type(raw).__name__}"
        )
    return raw


def override_config(raw: dict, overrides: Sequence[str]) -> ExperimentConfig:
    """Parse ``raw`` with ``overrides`` applied (see :func:`apply_overrides`)."""
    if not overrides:
        return config_from_dict(raw)
    try:
        defaults = config_to_dict(config_from_dict(raw))
    except ConfigError:
        defaults = None  # an invalid config that the overrides may fix
    return config_from_dict(apply_overrides(raw, overrides, defaults))


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and parse a YAML config file."""
    return override_config(read_yaml(path), overrides)
