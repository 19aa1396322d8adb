"""Names with arguments: ``"iaf:4"``, ``"tracegraph:nn:8"``, ``"renyi:0.5:baseline_beta=..."``.

Registries (estimators, guide heads) are chosen by name on the command line and in configs, and some
entries take arguments written after colons. One parser reads them all:

- **positional** arguments fill the entry's :class:`Arg` slots: each goes to the first unfilled slot
  that accepts it, so ``iwae:5:dreg`` and ``iwae:dreg:5`` mean the same;
- **keyword** arguments ``key=value`` set any field of the entry's options dataclass, the value read
  as YAML and checked against the field's type (``16,16`` is a list).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml

from .schema import coerce, documented, init_fields

__all__ = ["Arg", "int_arg", "float_arg", "choice_arg", "split_name", "parse_arguments", "syntax"]


@documented
@dataclass(frozen=True)
class Arg:
    """A positional argument slot of a registry entry."""

    field: str  #: the options field it sets
    label: str  #: how it is written in a syntax line, e.g. ``K`` or ``none|avg|nn``
    read: Callable[[str], Any]  #: text -> value; raises ValueError when the text does not fit this slot


def int_arg(field: str, label: str = "K") -> Arg:
    """A positive int, e.g. the number of particles or of flow steps."""

    def read(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{label} must be a positive int")
        return int(text)

    return Arg(field, label, read)


def float_arg(field: str, label: str) -> Arg:
    """A number, e.g. Renyi's alpha."""

    def read(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{label} must be a number") from None

    return Arg(field, label, read)


def choice_arg(field: str, choices: Sequence[str]) -> Arg:
    """One of a few words, e.g. a baseline kind."""

    def read(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{field} must be one of {'|'.join(choices)}")
        return text

    return Arg(field, "|".join(choices), read)


def syntax(name: str, slots: Sequence[Arg]) -> str:
    """``name[:A][:B]`` for help texts."""
    return name + "".join(f"[:{slot.label}]" for slot in slots)


def split_name(text: Any, kind: str, registry: Mapping[str, Any]) -> tuple[str, list[str], dict[str, str]]:
    """Split ``"name:a:b:key=value"`` into the name, the positional and the keyword arguments.

    :raises ValueError: for an empty text, an unknown name or an empty argument, naming the choices.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a {kind} name is required, e.g. one of {sorted(registry)}; got {text!r}")
    name, *args = text.strip().split(":")
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r} in {text!r}; expected one of {sorted(registry)}")
    if any(not a.strip() for a in args):
        raise ValueError(f"empty argument in {kind} {text!r}")
    positional = [a.strip() for a in args if "=" not in a]
    keywords = dict((k.strip(), v.strip()) for k, _, v in (a.partition("=") for a in args if "=" in a))
    return name, positional, keywords


def _keyword_value(options_cls: type, key: str, text: str, kind: str) -> Any:
    hints = typing.get_type_hints(options_cls)
    valid = [f for f in init_fields(options_cls)]
    if key not in valid:
        raise ValueError(f"unknown {kind} option {key!r}; expected one of {valid}")
    hint = hints[key]
    if typing.get_origin(hint) is tuple and "," in text:
        value: Any = [yaml.safe_load(part) for part in text.split(",") if part]
    else:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
    return coerce(value, hint, f"{kind} option {key}")


def parse_arguments(
    text: str, kind: str, name: str, slots: Sequence[Arg], positional: Sequence[str], keywords: Mapping[str, str],
    options_cls: type | None = None,
) -> dict[str, Any]:
    """The options fields that ``positional`` and ``keywords`` set, for an entry with ``slots``.

    :raises ValueError: for an argument that fits no slot, naming the entry's syntax.
    """
    values: dict[str, Any] = {}
    if positional and not slots:
        raise ValueError(f"{kind} {name!r} takes no arguments after a colon, got {text!r}")
    for arg in positional:
        reasons = []
        for slot in slots:
            if slot.field in values:
                continue
            try:
                values[slot.field] = slot.read(arg)
                break
            except ValueError as err:
                reasons.append(str(err))
        else:
            why = f": {'; '.join(reasons)}" if reasons else ": every argument is given already"
            raise ValueError(f"{kind} {name!r} takes {syntax(name, slots)!r}, got {text!r} ({arg!r} fits no argument{why})")
    for key, value_text in keywords.items():
        if options_cls is None or not dataclasses.is_dataclass(options_cls):
            raise ValueError(f"{kind} {name!r} takes no key=value options, got {text!r}")
        values[key] = _keyword_value(options_cls, key, value_text, kind)
    return values
