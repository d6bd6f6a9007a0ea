"""Dataclasses from and to plain data (the dicts, lists and scalars that JSON and YAML hold).

One parser for every typed configuration of the package (training recipes, model configs):
:func:`from_plain` builds a nested, frozen dataclass from a mapping, checking every key and value
against the field's type hint, so that a typo or a wrong type is an error naming the key path
(``optimizer.lr: expected a number``) instead of a silently ignored or half-used value.
:func:`to_plain` is its inverse (tuples become lists).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class PlainDataError(ValueError):
    """A mapping that does not fit its dataclass; the message names the key path."""


def from_plain(cls: type[T], data: Any, where: str = "", root: str | None = None) -> T:
    """Instantiate the (nested) dataclass ``cls`` from a mapping.

    Rules: unknown keys are errors; a nested dataclass field takes a mapping; lists become tuples
    (of the hinted length and item type); ints are accepted for floats, and so are strings that
    parse as numbers (YAML 1.1 reads ``1e-4`` as a string); floats must be finite; a union takes
    the first member type the value fits; ``Literal`` values must be one of the listed.

    Args:
        cls: the dataclass.
        data: the mapping.
        where: key path of ``data`` itself, prefixed to every key in errors (e.g. ``"model"``).
        root: what to call ``data`` in errors when ``where`` is empty (default: the class name).

    Raises:
        PlainDataError: (a ValueError) naming the offending key path. Errors the dataclass itself
            raises (its ``__post_init__`` checks) pass through unchanged.
    """
    return _build(cls, data, where, root or cls.__name__)


def to_plain(value: Any) -> Any:
    """``value`` (e.g. ``dataclasses.asdict(config)``) with every tuple made a list, recursively."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def _build(cls: type, data: Any, where: str, root: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and value types."""
    label = where or root
    if not isinstance(data, dict):
        raise PlainDataError(f"{label}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        keys = ", ".join(f"{where}.{key}" if where else key for key in unknown)
        raise PlainDataError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys}; known keys of {label}: {names}")
    kwargs = {
        name: _coerce(data[name], hints[name], f"{where}.{name}" if where else name, root)
        for name in names
        if name in data
    }
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str, root: str) -> Any:
    """``value`` checked against the type ``hint`` (lists become tuples, ints become floats)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, root)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        present = [option for option in options if option is not type(None)]
        if len(present) == 1:
            # An optional value: the error of the one real type says most.
            return _coerce(value, present[0], where, root)
        for option in present:
            try:
                return _coerce(value, option, where, root)
            except PlainDataError:
                continue
        raise PlainDataError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise PlainDataError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        arguments = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise PlainDataError(f"{where}: expected a list, got {value!r}")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_coerce(item, arguments[0], f"{where}.{index}", root) for index, item in enumerate(value))
        if len(value) != len(arguments):
            raise PlainDataError(f"{where}: expected a list of {len(arguments)} values, got {value!r}")
        return tuple(
            _coerce(item, kind, f"{where}.{index}", root) for index, (item, kind) in enumerate(zip(value, arguments))
        )
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise PlainDataError(f"{where}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise PlainDataError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlainDataError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 (PyYAML) reads "1e-4" as a string: it needs a dot ("1.0e-4"); accept both.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise PlainDataError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PlainDataError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PlainDataError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {hint!r}")


def _type_name(hint: Any) -> str:
    words = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    names = []
    for option in typing.get_args(hint):
        if typing.get_origin(option) is dict or option is dict:
            names.append("a mapping")
        else:
            names.append(words.get(option, getattr(option, "__name__", str(option))))
    return " or ".join(names)


__all__ = ["PlainDataError", "from_plain", "to_plain"]
