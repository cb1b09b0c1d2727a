"""Tokenize once per sweep: the tokenized train / eval sets kept under `<root>/<key>`, for every run with
the same data, tokenizer, template, cutoff_len and stage (`pipeline.tokenized_key`, computed without
reading a row). The first run of a sweep (or the driver's reference-cache build) writes the entry, the
others load it memory-mapped instead of reading, converting and tokenizing again.

An entry is a `tokenized_path` folder (`tokenized_path.save`: written under a temporary name, renamed into
place, so a reader finds it whole) whose `prefsweep_tokenized.json` also holds the key, the skipped-row
counts and the token columns' sha256 (`tokenized_fingerprint`, which the run computes anyway). An entry
that cannot be read, or whose tokens no longer match that sha256, is rebuilt with a warning. When two
runs build the same entry at once, the first rename wins and the other run keeps its own copy in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from trainer.data import tokenized_path as saved

logger = logging.getLogger(__name__)

Built = tuple["datasets.Dataset | None", "datasets.Dataset | None", dict[str, int]]


class CorruptEntry(Exception):
    """An entry whose files or checksum are not what was written."""


def entry_path(root: str | Path, key: str) -> Path:
    return Path(root) / key[:32]


def _read(path: Path, key: str) -> tuple[Built, str]:
    try:
        meta = json.loads((path / saved.META_FILE).read_text(encoding="utf-8"))
        loaded = datasets.load_from_disk(str(path))
        train, eval_ = loaded.get(saved.TRAIN), loaded.get(saved.EVAL)
    except Exception as err:  # noqa: BLE001 - any unreadable part means: build it again
        raise CorruptEntry(f"{type(err).__name__}: {err}") from None
    if meta.get("key") != key:
        raise CorruptEntry(f"its key is {meta.get('key')!r}, expected {key!r}")
    from trainer.data.pipeline import tokenized_fingerprint

    try:
        fingerprint = tokenized_fingerprint(train, eval_)
    except Exception as err:  # noqa: BLE001 - a truncated Arrow file fails here, when its rows are read
        raise CorruptEntry(f"{type(err).__name__}: {err}") from None
    if fingerprint != meta.get("fingerprint"):
        raise CorruptEntry("its tokens do not match the sha256 written with them")
    return (train, eval_, dict(meta.get("skipped") or {})), fingerprint


def load_or_build(root: str | Path, key: str, settings: dict[str, Any], build: Callable[[], Built], *,
                  refresh: bool = False) -> tuple[Built, str, str]:
    """((train, eval, skipped), fingerprint, status) from the entry `key` under `root`, or from `build()`,
    whose result is then written there. status: "hit", "miss", or "rebuilt" (the entry was corrupt).
    `refresh` (`overwrite_cache`): build and replace the entry."""
    from trainer.data.pipeline import tokenized_fingerprint

    path = entry_path(root, key)
    status = "miss"
    if path.is_dir() and refresh:
        shutil.rmtree(path, ignore_errors=True)
    elif saved.has_tokenized_data(path):
        try:
            built, fingerprint = _read(path, key)
            logger.info("tokenized data from the cache %s", path)
            return built, fingerprint, "hit"
        except CorruptEntry as err:
            logger.warning("tokenized-dataset cache entry %s is unusable (%s); tokenizing again and replacing it",
                           path, err)
            shutil.rmtree(path, ignore_errors=True)
            status = "rebuilt"
    train, eval_, skipped = build()
    fingerprint = tokenized_fingerprint(train, eval_)
    meta = {**settings, "key": key, "fingerprint": fingerprint, "skipped": dict(skipped)}
    try:
        saved.save(path, train, eval_, meta)
    except OSError as err:
        if not saved.has_tokenized_data(path):  # not a lost race with another run: worth a word
            logger.warning("could not write the tokenized-dataset cache entry %s: %s", path, err)
    return (train, eval_, skipped), fingerprint, status
