"""What happened to a run's reference cache (`CacheInfo`, also the source of its MLflow tags), and how the
cache reports progress."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("prefsweep.ref_cache")

SPLITS = ("train", "eval")


@dataclass
class CacheInfo:
    """What happened to the reference cache of one config (also the MLflow tags' source)."""

    key: str = ""
    """sha256 of the key fields; empty when no key was computed."""
    path: Path | str | None = None
    """The cache entry (<root>/<key>): a local path, or a URI on an object store."""
    hit: bool = False
    """An existing, valid cache was read."""
    build_seconds: float = 0.0
    """Wall time of building it here (model load, forwards, write); 0 on a hit."""
    rows: dict[str, int] = field(default_factory=dict)
    """Examples per split in the cache."""
    status: str = "off"
    """hit (read an existing cache) | miss (built it here) | off (no cache: never, reference-free, or auto without one)."""
    reason: str = ""
    """Why off, or why a cache was rebuilt."""
    reference_forwards: int = 0
    """Examples passed through the reference model by this call (one per example on a miss, 0 on a hit)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        return out

    def tags(self) -> dict[str, str]:
        """MLflow tags: prefsweep.ref_cache = hit|miss|off, prefsweep.ref_cache_build_s."""
        return {"prefsweep.ref_cache": self.status, "prefsweep.ref_cache_build_s": f"{self.build_seconds:.3f}"}


class CacheInvalid(Exception):
    """A cache directory exists but must not be read (key mismatch, checksum, unreadable, row count)."""


def say(message: str, *args: Any, warn: bool = False) -> None:
    """Log to `prefsweep.ref_cache`; with no logging configured anywhere, print to stderr instead."""
    level = logging.WARNING if warn else logging.INFO
    if logger.isEnabledFor(level) and logger.hasHandlers():
        logger.log(level, message, *args)
    else:
        print("prefsweep: " + (message % args), file=sys.stderr, flush=True)
