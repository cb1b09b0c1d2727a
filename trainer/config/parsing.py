"""From YAML text and `KEY=VALUE` overrides to a typed, validated `TrainConfig`.

Each flat key belongs to exactly one dataclass group of `schema.py` or to Hugging Face `TrainingArguments`;
unknown keys are errors naming the key and the nearest valid one. `load_config` runs every check (see
`validation.py`) before any model or dataset loads.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from trainer.config.coerce import coerce
from trainer.config.lf_compat import legacy_key_names, map_legacy_keys
from trainer.config.lf_keys import lf_key_names, map_lf_keys
from trainer.config.schema import (
    GROUPS,
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    RayArguments,
    TrainConfig,
)
from trainer.config.validation import validate
from trainer.errors import ConfigError, did_you_mean


def training_fields() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}



def valid_keys() -> list[str]:
    keys = [f.name for g in GROUPS.values() for f in dataclasses.fields(g)]
    return keys + list(training_fields()) + ["use_ray", "ray"] + legacy_key_names() + lf_key_names()


def unknown_key_error(key: str, candidates: list[str], where: str = "") -> ConfigError:
    return ConfigError(f"unknown config key {where}{key!r}{did_you_mean(key, candidates)}")


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (`0.1` -> float, `true` -> bool, `null` -> None)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Merge overrides into a raw flat config; `ray.num_workers=2` sets a key of the `ray:` section."""
    merged = dict(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        if key.startswith("ray."):
            section = dict(merged.get("ray") or {})
            section[key[4:]] = value
            merged["ray"] = section
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of config keys, got {type(raw).__name__}")
    return raw


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] = ()) -> TrainConfig:
    """Parse and validate a config (YAML path or raw dict) plus overrides; raises ConfigError."""
    raw = read_yaml(source) if not isinstance(source, dict) else dict(source)
    raw = apply_overrides(raw, overrides)
    where = f"{source}: " if not isinstance(source, dict) else ""
    try:
        return _build(raw)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A new validated config: the keys `cfg` was built from with `overrides` applied (`ray.x` keys too).

    How a parsed config is changed below the entry point (a trial's sampled values, absolute paths, a
    resume): never by re-reading the YAML, and always re-validated, as defaults can depend on other keys.
    """
    return _build(apply_overrides(cfg.given, overrides))


def _build(given: dict[str, Any]) -> TrainConfig:
    raw = map_lf_keys(map_legacy_keys(given))
    training_types = training_fields()
    group_values: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    field_group = {f.name: (name, f) for name, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    group_hints = {name: typing.get_type_hints(cls) for name, cls in GROUPS.items()}
    training: dict[str, Any] = {}
    ray_raw = raw.pop("ray", None) or {}
    use_ray = coerce("use_ray", raw.pop("use_ray", True), bool)

    for key, value in raw.items():
        if key in field_group:
            group, f = field_group[key]
            group_values[group][key] = coerce(key, value, group_hints[group][key])
        elif key == "resume_from_checkpoint":
            if value is not None and not isinstance(value, (bool, str)):
                raise ConfigError(f"resume_from_checkpoint: expected true, false or a path, got {value!r}")
            training[key] = value
        elif key in training_types:
            training[key] = coerce(key, value, training_types[key])
        else:
            raise unknown_key_error(key, valid_keys())

    if not isinstance(ray_raw, dict):
        raise ConfigError(f"ray: must be a mapping of Ray settings, got {ray_raw!r}")
    ray_hints = typing.get_type_hints(RayArguments)
    ray_values = {}
    for key, value in ray_raw.items():
        if key not in ray_hints:
            raise unknown_key_error(key, list(ray_hints), where="ray.")
        ray_values[key] = coerce(f"ray.{key}", value, ray_hints[key])

    model = ModelArguments(**group_values["model"])
    data = DataArguments(**group_values["data"])
    finetuning = FinetuningArguments(**group_values["finetuning"])
    ray = RayArguments(**ray_values)
    training.setdefault("output_dir", "outputs/run")
    cfg = TrainConfig(model=model, data=data, finetuning=finetuning, ray=ray, training=training, use_ray=use_ray,
                      given=copy.deepcopy(given))
    validate(cfg)
    return cfg
