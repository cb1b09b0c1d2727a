"""Errors for unknown keys in a sweep spec that name the valid key most likely meant."""

from __future__ import annotations

import difflib

from trainer.errors import ConfigError


def nearest(key: str, valid) -> str | None:
    """The valid name `key` most likely meant: one it begins, else the closest spelling."""
    valid = list(valid)
    prefixed = [v for v in valid if v.startswith(key) or key.startswith(v)]
    if prefixed:
        return min(prefixed, key=lambda v: abs(len(v) - len(key)))
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return near[0] if near else None


def unknown_key(key: str, valid, where: str) -> ConfigError:
    near = nearest(key, valid)
    hint = f"; did you mean {near!r}?" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid: {', '.join(valid)})")
