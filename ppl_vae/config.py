"""Experiment configs: YAML in, typed frozen dataclasses out.

A config file has one section per component::

    data:      DataConfig        (ppl_vae.data)
    model:     name + the model's config dataclass (ppl_vae.models.MODELS)
    guide:     name + the guide's config dataclass (ppl_vae.guides.GUIDES)
    estimator: EstimatorConfig   (ppl_vae.inference.estimators)
    optim:     OptimConfig       (ppl_vae.inference.fit)
    train:     TrainConfig       (ppl_vae.inference.fit)
    eval:      EvalConfig        (ppl_vae.inference.evaluate)
    kl_weighting: KLWeighting    (ppl_vae.inference.objectives: beta-VAE, KL annealing, free bits)
    semi_supervised: SemiSupervisedConfig (ppl_vae.inference.semisup: M2 with a few labels)
    m1:        a nested config (model, guide, estimator, optim, train, ...) of an M1 VAE trained
               first; the main model then trains on its latent codes (M1+M2)
    run:       RunConfig         (below)

Every key is checked where it enters: an unknown key, a value of the wrong
type or an invalid value raises :class:`~ppl_vae.errors.ConfigError` naming
``section.key``, the expected and the actual value.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .data import DataConfig
from .errors import ConfigError
from .guides import GUIDES
from .inference.estimators import EstimatorConfig
from .inference.evaluate import EvalConfig
from .inference.fit import OptimConfig, TrainConfig
from .inference.objectives import KLWeighting
from .inference.semisup import SemiSupervisedConfig
from .models import MODELS
from .spec import default_guide, validate_spec

__all__ = [
    "ComponentConfig",
    "ExperimentConfig",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_dataclass",
]


@dataclass(frozen=True)
class RunConfig:
    """Where runs go (the ``run:`` section)."""

    out_dir: str = "runs"  # parent folder of run directories
    name: Optional[str] = None  # run directory name; None: <config name>-<timestamp>


@dataclass(frozen=True)
class ComponentConfig:
    """A registry entry chosen by ``name`` with that entry's config dataclass."""

    name: str  # registry key
    config: Any  # the entry's frozen config dataclass


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what :func:`ppl_vae.experiment.build_experiment` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ComponentConfig = field(default_factory=lambda: ComponentConfig("vae", MODELS["vae"].config_cls()))
    guide: ComponentConfig = field(default_factory=lambda: ComponentConfig("normal", GUIDES["normal"].config_cls()))
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kl_weighting: KLWeighting = field(default_factory=KLWeighting)
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)
    m1: Optional["ExperimentConfig"] = None  # M1+M2: the M1 stage, trained first on the same data
    run: RunConfig = field(default_factory=RunConfig)


_PLAIN_SECTIONS = {
    "data": DataConfig,
    "estimator": EstimatorConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "kl_weighting": KLWeighting,
    "semi_supervised": SemiSupervisedConfig,
    "run": RunConfig,
}
_REGISTRY_SECTIONS = {"model": MODELS, "guide": GUIDES}
SECTIONS = ("data", "model", "guide", "estimator", "kl_weighting", "semi_supervised", "m1", "optim", "train", "eval", "run")
#: sections an ``m1:`` stage may not have: it shares the data, and is itself unsupervised
_NOT_IN_M1 = ("data", "semi_supervised", "m1", "run")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r} ({type(value).__name__})")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an int, got {value!r} ({type(value).__name__})")
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r} ({type(value).__name__})")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r} ({type(value).__name__})")
        return value
    return value


def _unknown_key(section: str, key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {section}.{key}{hint}; valid keys: {', '.join(valid)}")


def parse_dataclass(cls: type, mapping: Any, section: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, checking keys, types and values."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in mapping.items():
        if key not in names:
            raise _unknown_key(section, str(key), names)
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ConfigError(f"{section} is missing the required key(s) {missing}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        # Component checks (e.g. nets.check_choice) may not know the key they check; name it here.
        keys = [f"{section}.{key}" for key in _rejected_keys(cls, kwargs)]
        if keys and not any(key in message for key in keys):
            message = f"{', '.join(keys)}: {message}"
        raise ConfigError(f"invalid {section} config: {message}") from None


def _rejected_keys(cls: type, kwargs: dict) -> list[str]:
    """The keys whose value ``cls`` rejects on its own, with defaults for every other field."""
    rejected = []
    for key, value in kwargs.items():
        try:
            cls(**{key: value})
        except ValueError:
            rejected.append(key)
        except TypeError:
            pass  # cls needs other fields as well, so this value cannot be judged alone
    return rejected


def _parse_component(section: str, raw: Any) -> ComponentConfig:
    registry = _REGISTRY_SECTIONS[section]
    raw = dict(raw or {})
    default_name = "vae" if section == "model" else "normal"
    name = raw.pop("name", default_name)
    if name not in registry:
        raise ConfigError(f"unknown {section}.name {name!r}; expected one of {sorted(registry)}")
    return ComponentConfig(name, parse_dataclass(registry[name].config_cls, raw, section))


def config_from_dict(raw: Any) -> ExperimentConfig:
    """Parse a config mapping (as read from YAML) into an :class:`ExperimentConfig`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown section {key!r}{hint}; valid sections: {', '.join(SECTIONS)}")
    kwargs: dict[str, Any] = {}
    for section, cls in _PLAIN_SECTIONS.items():
        if section in raw:
            kwargs[section] = parse_dataclass(cls, raw[section], section)
    for section in _REGISTRY_SECTIONS:
        if section in raw:
            if not isinstance(raw[section], (dict, type(None))):
                raise ConfigError(f"section {section!r} must be a mapping, got {raw[section]!r}")
            kwargs[section] = _parse_component(section, raw[section])
    if raw.get("m1") is not None:
        m1 = raw["m1"]
        if not isinstance(m1, dict):
            raise ConfigError(f"section 'm1' must be a mapping of sections (model, guide, train, ...), got {m1!r}")
        for key in m1:
            if key in _NOT_IN_M1:
                raise ConfigError(f"m1.{key}: the M1 stage shares the main config's {key!r}; remove it from m1")
        try:
            kwargs["m1"] = config_from_dict(m1)
        except ConfigError as err:
            raise ConfigError(f"in section m1: {err}") from None
    model, guide = kwargs.get("model"), kwargs.get("guide")
    if model is not None and model.name == "spec":
        if guide is None:
            guide = kwargs["guide"] = ComponentConfig("spec", default_guide(model.config))
        if guide.name != "spec":
            raise ConfigError(f"a spec model needs a spec guide (guide.name: spec), got guide.name {guide.name!r}")
        validate_spec(model.config, guide.config)
    elif guide is not None and guide.name == "spec":
        raise ConfigError("a spec guide (guide.name: spec) needs a spec model (model.name: spec)")
    return ExperimentConfig(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: ExperimentConfig) -> dict:
    """The fully resolved config as plain YAML-able values (inverse of :func:`config_from_dict`)."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        value = getattr(config, section)
        if section == "m1":
            if value is not None:
                out[section] = {k: v for k, v in config_to_dict(value).items() if k not in _NOT_IN_M1}
            continue
        if isinstance(value, ComponentConfig):
            out[section] = {"name": value.name, **_plain(dataclasses.asdict(value.config))}
        else:
            out[section] = _plain(dataclasses.asdict(value))
    return out


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping.

    An M1+M2 config's first stage takes ``m1.section.key=value``, e.g. ``m1.train.epochs=100``.
    """
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if not all(parts) or not (len(parts) == 2 or (len(parts) == 3 and parts[0] == "m1")):
            raise ConfigError(f"--set expects section.key=value (or m1.section.key=value), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: cannot parse the value: {err}") from None
        if len(parts) == 3:
            m1 = raw.get("m1")
            if not isinstance(m1, dict):
                raise ConfigError(f"--set {item!r}: this config has no m1 section (only M1+M2 configs do)")
            _, section, key = parts
            valid = [s for s in SECTIONS if s not in _NOT_IN_M1]
            if section not in valid:
                raise ConfigError(f"--set {item!r}: unknown m1 section {section!r}; valid: {', '.join(valid)}")
            raw["m1"] = _set_key(dict(m1), section, key, value, f"m1.{section}")
            continue
        section, key = parts
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
        raw = _set_key(raw, section, key, value, section)
    return raw


def _set_key(raw: dict, section: str, key: str, value: Any, where: str) -> dict:
    current = raw.get(section) or {}
    if not isinstance(current, dict):
        raise ConfigError(f"section {where!r} must be a mapping, got {current!r}")
    raw[section] = {**current, key: value}
    return raw


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file; :class:`ConfigError` if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    return raw or {}


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and parse a YAML config file."""
    return config_from_dict(apply_overrides(read_yaml(path), overrides))
