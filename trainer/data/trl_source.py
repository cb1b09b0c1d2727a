"""A `dataset:` name no `dataset_info.json` registers: a TRL-format local file / folder / glob, or a hub id.

Local paths are tried relative to dataset_dir, then to the working directory; a name shaped like a hub id
(`owner/name`) that is no local path is a hub dataset (split train), fetched or found in the hub cache.
The format (preference pairs or unpaired KTO rows) is detected from the column names of the first file
(`trl_format.detect`), so a dataset whose columns fit no format, or both, stops the config check.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer import hub
from trainer.data import trl_format
from trainer.data.dataset_attr import DatasetAttr, has_magic, local_data_path
from trainer.data.reading import data_files
from trainer.errors import ConfigError, DataError


def _local(name: str, info_dir: Path) -> Path | None:
    for base in (info_dir, Path.cwd()):
        candidate = base / Path(name).expanduser()
        if has_magic(name) or candidate.exists():
            try:
                if data_files(candidate):
                    return candidate
            except (DataError, OSError):
                if not has_magic(name):
                    return candidate  # exists but is unusable: local_data_path names what is wrong
    return None


def trl_attr(name: str, info_dir: Path) -> DatasetAttr | None:
    """The attr of a TRL-format dataset named by path or hub id; None when `name` is neither."""
    where = f"dataset {name!r}"
    local = _local(name, info_dir)
    if local is not None:
        path = local_data_path(local.parent, local.name, where=f"{where} (TRL format)")
        attr = DatasetAttr(name=name, file_name=name, trl=True, path=path, **trl_format.ATTR_FIELDS)
        attr.ranking = trl_format.detect(_file_columns(data_files(path)[0]), where)
        return attr
    if not hub.looks_like_hub_id(name):
        return None
    from trainer.data.hub_datasets import check_layout, columns, snapshot

    attr = DatasetAttr(name=name, file_name=name, hub_url=name, trl=True, **trl_format.ATTR_FIELDS)
    attr.path = snapshot(name, revision=None, folder=None, what=f"{where} (a hub id in TRL format)")
    check_layout(attr.path, subset=None, split=attr.split, folder=None, where=where)
    try:
        found = columns(attr.path, subset=None, split=attr.split, folder=None)
    except DataError as err:
        raise ConfigError(f"{where}: {err}") from None
    attr.ranking = trl_format.detect(found, where)
    return attr


def _file_columns(file: Path) -> list[str]:
    """Column names of a data file: its schema (parquet, arrow, csv header), its first JSON Lines row, or
    the first row (or the columns) of a JSON document."""
    kind = file.suffix.lstrip(".").lower()
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(file).names)
        if kind == "arrow":
            import pyarrow as pa

            with pa.memory_map(str(file)) as source:
                return list(pa.ipc.open_stream(source).schema.names)
        if kind == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(file, nrows=0).columns]
        text = file.read_text(encoding="utf-8-sig")
        if kind == "json" and text.lstrip().startswith("["):
            rows = json.loads(text)
            first = rows[0] if rows else {}
        elif kind == "json" and _is_columns_object(text):
            first = json.loads(text)
        else:  # JSON Lines (.jsonl, or a .json holding lines)
            first = json.loads(next((line for line in text.splitlines() if line.strip()), "{}"))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{file}: cannot read the column names: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(first, dict):
        raise ConfigError(f"{file}: rows must be objects with TRL columns, got {type(first).__name__}")
    return list(first)


def _is_columns_object(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False  # JSON Lines
    return isinstance(doc, dict) and bool(doc) and all(isinstance(v, list) for v in doc.values())
