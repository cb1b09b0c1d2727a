"""Checking a raw YAML value against a field's type annotation (dataclass fields and TrainingArguments)."""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any, Literal

from trainer.errors import ConfigError


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field's type; accept ints for floats and strings only where typed so."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and set(args) - set(enums) <= {str, type(None)}:  # HF's `SomeEnum | str` choice fields
            return coerce(key, value, enums[0])
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if errors else ConfigError(f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `5e-6` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every `< 0` check below
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [member.value for member in annotation]
        if isinstance(value, bool) and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            value = "no" if value is False else value
        if isinstance(value, annotation) or value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if origin in (dict, list) or annotation in (dict, list):
        expected = origin or annotation
        if expected is dict and isinstance(value, dict) and len(args) == 2:  # check each value, keep numbers
            checked = {k: coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
            return {k: v if isinstance(v, (int, float)) else checked[k] for k, v in value.items()}
        if isinstance(value, expected):
            return value
        if expected is list and isinstance(value, str):
            return as_list(value)
        raise ConfigError(f"{key}: expected a {expected.__name__}, got {value!r}")
    return value  # enums and other HF types: TrainingArguments converts and validates them
