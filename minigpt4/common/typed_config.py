"""Dataclass schemas checked from YAML/OmegaConf trees: unknown keys (with the nearest valid one),
types (gently coerced: "a, b" as a list, 3.0 as an int) and value checks, each error naming the
key and the file. The schemas themselves live in `schema.py`; this is the machinery.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


T = TypeVar("T")


# ------------------------------------------------------------------------------ value checks
def positive(obj: Any, prefix: str, keys: Sequence[str]) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"{prefix}.{key} must be > 0, got {getattr(obj, key)}")


def nonnegative(obj: Any, prefix: str, keys: Sequence[str]) -> None:
    for key in keys:
        if getattr(obj, key) < 0:
            raise ConfigError(f"{prefix}.{key} must be >= 0, got {getattr(obj, key)}")


def one_of(obj: Any, prefix: str, key: str, choices: Sequence[str]) -> None:
    if getattr(obj, key) not in choices:
        raise ConfigError(f"{prefix}.{key} must be one of {', '.join(choices)}, got {getattr(obj, key)!r}")


# ------------------------------------------------------------------------------ building
def nearest(name: str, choices: Sequence[str], cutoff: float = 0.0) -> Optional[str]:
    """The choice closest to `name` (difflib ratio >= `cutoff`), for "did you mean" hints; None if none."""
    near = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


def schema_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a schema defines, nested sections included."""
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        sub = _dataclass_of(_hints(cls)[f.name])
        if sub is not None:
            keys.extend(schema_keys(sub, f"{prefix}{f.name}."))
    return keys


def check_keys(node: Any, cls: type, where: str, prefix: str) -> None:
    """Raise ConfigError for a key of `node` that `cls` does not define, naming `where` and the nearest key."""
    if not isinstance(node, (DictConfig, Mapping)):
        return
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in node.keys():
        if key not in names:
            near = nearest(prefix + str(key), schema_keys(cls, prefix))
            hint = f"; did you mean {near!r}?" if near else ""
            raise ConfigError(f"{where}: unknown config key {prefix + str(key)!r}{hint}")
        sub = _dataclass_of(hints[str(key)])
        if sub is not None:
            check_keys(node[key], sub, where, f"{prefix}{key}.")


def build(cls: type[T], node: Any, prefix: str, where: str = "config", check: bool = True) -> T:
    """A checked `cls` from a mapping: unknown keys, wrong types and impossible values are errors
    (each naming the key and `where`). `check=False` skips the value checks (nested sections:
    their parent's `check` runs them)."""
    if node is None:
        node = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, cls):
        obj = node
    else:
        if not isinstance(node, Mapping):
            raise ConfigError(f"{where}: {prefix.rstrip('.') or 'section'} must be a mapping, got {node!r}")
        check_keys(node, cls, where, prefix)
        hints = _hints(cls)
        values = {k: _typed(v, hints[k], prefix + k, where) for k, v in node.items()}
        obj = cls(**values)
    if check:
        try:
            obj.check()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(hint: Any) -> Optional[type]:
    return hint if dataclasses.is_dataclass(hint) else None


def _typed(value: Any, hint: Any, key: str, where: str) -> Any:
    """`value` checked against (and gently coerced to) the annotation `hint`."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for arm in args[:-1]:  # the first arm that takes the value; the last one's error if none does
            try:
                return _typed(value, arm, key, where)
            except ConfigError:
                pass
        return _typed(value, args[-1], key, where)
    sub = _dataclass_of(hint)
    if sub is not None:
        return build(sub, value, key + ".", where, check=False)
    if value is None:
        raise ConfigError(f"{where}: {key} must not be null")
    if origin in (list, Sequence):
        if isinstance(value, str):  # "a, b" as a list, as --options users write it
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple, ListConfig)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_typed(v, typing.get_args(hint)[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list, DictConfig, ListConfig)):
            raise ConfigError(f"{where}: {key} must be text, got {value!r}")
        return str(value)
    return value
