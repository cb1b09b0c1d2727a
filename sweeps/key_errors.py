"""Errors for unknown keys in a sweep spec that name the valid key most likely meant."""

from __future__ import annotations

from trainer.errors import ConfigError, did_you_mean


def unknown_key(key: str, valid, where: str) -> ConfigError:
    valid = list(valid)
    return ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, valid, prefixes=True)} (valid: {', '.join(valid)})")
