"""Errors prefsweep raises for bad user input (configs, data); each message names the key, file or row.

`nearest` / `did_you_mean` are the project's one rule for suggesting the name a user most likely meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A training config or sweep spec is invalid; the message names the key and what is wrong."""


class DataError(ValueError):
    """A dataset cannot be used; the message names the file (and row) and what is wrong."""


def nearest(key: str, valid: Iterable[str], cutoff: float = 0.6, *, prefixes: bool = False) -> str | None:
    """The valid name `key` most likely meant: the closest spelling (difflib ratio >= `cutoff`; 0 always
    finds one when `valid` is not empty). `prefixes`: first a name `key` begins, or that begins `key`
    (sweep keys, where `sched` means `scheduler`)."""
    valid = list(valid)
    if prefixes:
        prefixed = [v for v in valid if v.startswith(key) or key.startswith(v)]
        if prefixed:
            return min(prefixed, key=lambda v: abs(len(v) - len(key)))
    near = difflib.get_close_matches(key, valid, n=1, cutoff=cutoff)
    return near[0] if near else None


def did_you_mean(key: str, valid: Iterable[str], cutoff: float = 0.6, *, prefixes: bool = False) -> str:
    """`; did you mean 'x'?` for the `nearest` valid name, or "" when none is near."""
    near = nearest(key, valid, cutoff, prefixes=prefixes)
    return f"; did you mean {near!r}?" if near else ""
