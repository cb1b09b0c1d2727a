"""Hub datasets (`hf_hub_url` entries, TRL-format hub ids): a snapshot in the hub cache, read with `datasets`.

The snapshot is fetched (or found, offline) when the config is validated, so a sweep whose data is not
in the cache stops in the driver, before any trial. `subset` (a config name), `split` (default train) and
`folder` (a sub-directory, `data_dir` to `datasets`) mean what they mean to `datasets.load_dataset`,
which reads the snapshot's parquet / arrow / json / jsonl / csv files and the `configs:` of its README.
A subset or split the snapshot does not have is a ConfigError listing the ones it has.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from trainer import hub
from trainer.errors import ConfigError, DataError


@functools.lru_cache(maxsize=64)
def _snapshot(repo_id: str, revision: str | None, folder: str | None, cache: str, offline: bool, what: str) -> Path:
    # One download (or cache look-up) per process: configs are validated several times per run.
    patterns = [f"{folder.strip('/')}/*", "README.md"] if folder else None
    return hub.snapshot(repo_id, repo_type="dataset", revision=revision, cache_dir=cache,
                        allow_patterns=patterns, what=what)


def snapshot(repo_id: str, *, revision: str | None, folder: str | None, what: str) -> Path:
    return _snapshot(repo_id, revision, folder, str(hub.hub_cache()), hub.offline(), what)


def check_layout(path: Path, *, subset: str | None, split: str, folder: str | None, where: str) -> None:
    """The subset, split and folder exist in the snapshot at `path` (nothing is read yet)."""
    import datasets

    if folder and not (path / folder).is_dir():
        raise ConfigError(f"{where}: folder {folder!r} is not in the dataset (snapshot {path})")
    try:
        subsets = datasets.get_dataset_config_names(str(path), data_dir=folder)
    except Exception as err:  # datasets raises many types for an unreadable layout
        raise ConfigError(f"{where}: {path} holds no dataset `datasets` can read: {_one_line(err)}") from None
    if subset is not None and subset not in subsets:
        raise ConfigError(f"{where}: subset {subset!r} is not in the dataset; it has {sorted(subsets)}")
    if subset is None and len(subsets) > 1 and "default" not in subsets:
        raise ConfigError(f"{where}: the dataset has subsets {sorted(subsets)}; name one with `subset`")
    try:
        splits = datasets.get_dataset_split_names(str(path), subset, data_dir=folder)
    except Exception as err:
        raise ConfigError(f"{where}: cannot list the splits of {path}: {_one_line(err)}") from None
    if split not in splits:
        raise ConfigError(f"{where}: split {split!r} is not in the dataset; it has {sorted(splits)}")


def load(path: Path, *, subset: str | None, split: str, folder: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(str(path), subset, split=split, data_dir=folder)
    except Exception as err:
        raise DataError(f"{path}: cannot be read with datasets: {_one_line(err)}") from None


def columns(path: Path, *, subset: str | None, split: str, folder: str | None) -> list[str]:
    return list(load(path, subset=subset, split=split, folder=folder).column_names)


def read_records(path: Path, *, subset: str | None, split: str, folder: str | None) -> list[tuple[str, Any]]:
    """(row location `split:index`, record) for every row; `datasets` parses the files."""
    rows = load(path, subset=subset, split=split, folder=folder)
    return [(f"{split}:{i}", record) for i, record in enumerate(rows.to_list())]


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]
