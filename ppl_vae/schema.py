"""Typed, frozen config dataclasses: field checks, parsing from YAML mappings, and field documentation.

Every config section of ppl_vae is a small frozen dataclass. This module holds what they share:

- **checks** (:func:`check_fields` with rules such as :data:`POSITIVE_INT`): each dataclass states, in one
  table in its ``__post_init__``, what its fields may hold; a bad value raises ``ValueError`` naming
  ``section.field``, the expected and the actual value;
- **parsing** (:func:`parse_dataclass`): a mapping read from YAML becomes the dataclass, with every key
  checked against the type hints (lists become tuples, ints become floats where a float is expected);
- **documentation** (:func:`documented`): the ``#:`` comment above each field is added to the class
  docstring, so ``help()``, IDEs and Sphinx all show it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from typing import Any, Callable, Iterable, Sequence

from .errors import ConfigError

__all__ = [
    "Rule",
    "POSITIVE_INT",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "NON_NEGATIVE",
    "BOOL",
    "SIZES",
    "int_at_least",
    "number_in",
    "one_of",
    "optional",
    "check_fields",
    "check_value",
    "coerce",
    "parse_dataclass",
    "plain",
    "as_mapping",
    "unknown_key",
    "documented",
]

#: A field rule: ``rule(where, value)`` returns the (normalised) value or raises ``ValueError``.
Rule = Callable[[str, Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(minimum: int) -> Rule:
    """An int ``>= minimum``."""
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"

    def rule(where: str, value: Any) -> int:
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{where} must be {expected}, got {value!r}")
        return value

    return rule


def number_in(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite number in the interval from ``low`` to ``high`` (open or closed at each end)."""
    if low == 0 and high == math.inf:
        expected = "a finite number > 0" if low_open else "a finite number >= 0"
    else:
        expected = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def rule(where: str, value: Any) -> float:
        ok = _is_number(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise ValueError(f"{where} must be {expected}, got {value!r}")
        return value

    return rule


def one_of(choices: Iterable[str]) -> Rule:
    """One of ``choices`` (a registry's keys, for example)."""

    def rule(where: str, value: Any) -> Any:
        options = sorted(choices) if isinstance(choices, dict) else list(choices)
        if value not in options:
            raise ValueError(f"{where} must be one of {options}, got {value!r}")
        return value

    return rule


def optional(inner: Rule) -> Rule:
    """None, or a value that passes ``inner``."""

    def rule(where: str, value: Any) -> Any:
        return None if value is None else inner(where, value)

    return rule


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _sizes(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) and v >= 1 for v in value):
        raise ValueError(f"{where} must be a list of positive ints, got {value!r}")
    return tuple(value)


POSITIVE_INT: Rule = int_at_least(1)
NON_NEGATIVE_INT: Rule = int_at_least(0)
POSITIVE: Rule = number_in(0, low_open=True)
NON_NEGATIVE: Rule = number_in(0)
BOOL: Rule = _bool
SIZES: Rule = _sizes


def check_value(where: str, value: Any, rule: Rule) -> Any:
    """Apply one rule; ``ValueError`` naming ``where`` on failure."""
    return rule(where, value)


def check_fields(obj: Any, section: str, **rules: Rule) -> None:
    """Check the fields of a frozen dataclass instance against ``rules`` (field name -> rule).

    Normalised values (a list turned into a tuple) are written back.

    :raises ValueError: ``"section.field must be ..., got ..."`` for the first field that fails.
    """
    for name, rule in rules.items():
        value = getattr(obj, name)
        checked = rule(f"{section}.{name}", value)
        if checked is not value:
            object.__setattr__(obj, name, checked)


# -- parsing mappings into dataclasses ----------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _wrong(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where} must be {expected}, got {value!r} ({type(value).__name__})")


def _coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(where, "true or false", value)
        return value
    if hint is int:
        if not _is_int(value):
            raise _wrong(where, "an int", value)
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _wrong(where, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(where, "a string", value)
        return value
    return value


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats.

    :raises ConfigError: naming ``where``, the expected type and the value.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if hint is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(where, "a list", value)
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, "a mapping", value)
        return value
    return _coerce_scalar(value, hint, where)


def unknown_key(section: str, key: str, valid: Sequence[str], hint: str = "") -> ConfigError:
    """The error for an unknown key, with the closest valid key suggested."""
    close = difflib.get_close_matches(key, valid, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {section}.{key}{suggestion}{hint}; valid keys: {', '.join(valid)}")


def init_fields(cls: type) -> list[str]:
    """The names of a dataclass's fields that its constructor takes."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def parse_dataclass(cls: type, mapping: Any, section: str, *, renamed: dict[str, str] | None = None) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, checking keys, types and values.

    :param dict renamed: old key -> new key, for a clearer message when an old key is used.
    :raises ConfigError: naming ``section.key`` for an unknown key, a wrong type or an invalid value.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = init_fields(cls)
    kwargs = {}
    for key, value in mapping.items():
        if key not in names:
            hint = f" (renamed {renamed[key]!r})" if renamed and key in renamed else ""
            raise unknown_key(section, str(key), names, hint)
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
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
        raise ConfigError(f"invalid {section} config: {err}") from None


def plain(value: Any) -> Any:
    """A config value as plain YAML-able values: tuples (and nested ones) become lists."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def as_mapping(obj: Any) -> dict:
    """A config dataclass as a plain mapping (the inverse of :func:`parse_dataclass`)."""
    return plain(dataclasses.asdict(obj))


# -- field documentation ------------------------------------------------------------------------

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*(?:#:\s?(.*))?$")
_DOC = re.compile(r"^\s+#:\s?(.*)$")


def documented(cls: type) -> type:
    """Class decorator: append each field's ``#:`` comment to the class docstring (shown by ``help()``).

    The comment is the ``#:`` line (or lines) directly above the field, or a ``#:`` comment at the end of
    its line, as Sphinx reads them.
    Without the source (a frozen application), the docstring is left as it is.
    """
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return cls
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        comment = _DOC.match(line)
        if comment:
            pending.append(comment.group(1).strip())
            continue
        field_match = _FIELD.match(line)
        if field_match and (pending or field_match.group(2)):
            docs[field_match.group(1)] = " ".join(pending) or field_match.group(2).strip()
        pending = []
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(docs)
    entries = [f"    {name}: {docs[name]}" for name in fields if name in docs]
    if entries:
        cls.__doc__ = (inspect.cleandoc(cls.__doc__ or "") + "\n\nFields:\n\n" + "\n".join(entries)).strip()
    return cls
