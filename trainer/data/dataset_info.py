"""`dataset_info.json`: LLaMA-Factory's registry of datasets, read into typed entries.

An entry names local files (`file_name`: a file, a folder, or a glob, relative to dataset_dir) or a
Hugging Face hub dataset (`hf_hub_url` with `subset`, `split`, `folder`, `revision`, through the hub
cache: `trainer.data.hub_datasets`). `dataset_dir: REMOTE:<repo>` reads the `dataset_info.json` of a hub
dataset repo. A `dataset` name that no `dataset_info.json` registers may be a TRL-format file, folder or
hub id (`trainer.data.trl_source`). Column and tag names default to LLaMA-Factory's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.data.dataset_attr import DatasetAttr, attr_fields, has_magic, local_data_path
from trainer.errors import ConfigError, did_you_mean

REMOTE = "REMOTE:"

DATASET_INFO = "dataset_info.json"
FORMATTINGS = ("alpaca", "sharegpt")
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "chosen", "rejected", "kto_tag")
MEDIA_COLUMNS = ("images", "videos", "audios")  # LF's multimodal columns
TAG_KEYS = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
)


def read_dataset_info(dataset_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Load the raw `dataset_info.json` mapping of `dataset_dir`; errors name the file."""
    info_path = Path(dataset_dir) / DATASET_INFO
    if not info_path.is_file():
        raise ConfigError(f"dataset_dir: {info_path} does not exist (dataset_dir must hold {DATASET_INFO})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{info_path}: cannot be read as JSON: {err}") from err
    if not isinstance(info, dict):
        raise ConfigError(f"{info_path}: must hold a JSON object mapping dataset names to entries")
    return info


def _info_dir(dataset_dir: str | Path) -> tuple[Path, str]:
    """(folder holding dataset_info.json, how errors name that file); REMOTE:<repo> is a hub snapshot."""
    text = str(dataset_dir)
    if text.startswith(REMOTE):
        from trainer.data.hub_datasets import snapshot

        repo = text[len(REMOTE) :]
        folder = snapshot(repo, revision=None, folder=None, what=f"dataset_dir {text!r}")
        return folder, f"{DATASET_INFO} of hub dataset {repo!r}"
    return Path(dataset_dir), str(Path(dataset_dir) / DATASET_INFO)


def get_dataset_attr(name: str, dataset_dir: str | Path) -> DatasetAttr:
    """The validated entry for dataset `name`, or a TRL-format path / hub id; ConfigError naming the key."""
    info_dir, label = _info_dir(dataset_dir)
    info_path = info_dir / DATASET_INFO
    info = read_dataset_info(info_dir) if info_path.is_file() else None
    if info is not None and name in info:
        return _entry_attr(name, info[name], info_dir, where=f"{label} entry {name!r}")
    from trainer.data.trl_source import trl_attr

    attr = trl_attr(name, info_dir)
    if attr is not None:
        return attr
    if info is None:
        read_dataset_info(info_dir)  # raises: dataset_dir must hold dataset_info.json
    hint = did_you_mean(name, info) or f"; it has: {', '.join(sorted(info)) or 'nothing'}"
    raise ConfigError(
        f"dataset {name!r} is not in {label} nor a TRL-format file, folder or hub id{hint}"
    )


ENTRY_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset",
              "folder", "hf_hub_url", "ms_hub_url", "om_hub_url", "revision"}
UNSUPPORTED_SOURCES = {
    "ms_hub_url": "ModelScope hub datasets are not supported (prefsweep reads the Hugging Face hub)",
    "om_hub_url": "Modelers (OpenMind) hub datasets are not supported (prefsweep reads the Hugging Face hub)",
    "script_url": "dataset loading scripts are not supported (datasets 4 removed them)",
    "cloud_file_name": "cloud files are not supported (copy the file and set file_name)",
}


def _entry_attr(name: str, entry: Any, info_dir: Path, *, where: str) -> DatasetAttr:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object")
    if "file_name" not in entry and "hf_hub_url" not in entry:
        other = [k for k in UNSUPPORTED_SOURCES if k in entry]
        if other:
            raise ConfigError(f"{where}: {other[0]}: {UNSUPPORTED_SOURCES[other[0]]}; add an hf_hub_url, or "
                              f"download the data and point file_name at it")
        raise ConfigError(f"{where}: has no file_name (or hf_hub_url)")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(ENTRY_KEYS)}")
    for key in ("hf_hub_url", "subset", "split", "folder", "revision"):
        if key in entry and entry[key] is not None and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
    if "hf_hub_url" in entry:
        attr = DatasetAttr(name=name, file_name=entry["hf_hub_url"], hub_url=entry["hf_hub_url"])
    else:
        if not isinstance(entry["file_name"], str) or not entry["file_name"].strip():
            raise ConfigError(f"{where}: file_name must be a file or folder name, got {entry['file_name']!r}")
        attr = DatasetAttr(name=name, file_name=entry["file_name"])
    attr.subset, attr.folder, attr.revision = entry.get("subset"), entry.get("folder"), entry.get("revision")
    attr.split = entry.get("split") or "train"
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise ConfigError(f"{where}: formatting {formatting!r} is not supported; use one of {list(FORMATTINGS)}")
    attr.formatting = formatting
    if not isinstance(entry.get("ranking", False), bool):
        raise ConfigError(f"{where}: ranking must be true or false, got {entry['ranking']!r}")
    attr.ranking = entry.get("ranking", False)
    num_samples = entry.get("num_samples")
    if num_samples is not None and (type(num_samples) is not int or num_samples < 1):
        raise ConfigError(f"{where}: num_samples must be an integer >= 1, got {num_samples!r}")
    attr.num_samples = num_samples
    for group, keys in (("columns", COLUMN_KEYS), ("tags", TAG_KEYS)):
        mapping = entry.get(group, {})
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where}: {group} must be an object")
        bad = sorted(set(mapping) - set(keys))
        media = [key for key in bad if key in MEDIA_COLUMNS]
        if media:
            raise ConfigError(f"{where}: multimodal data ({', '.join(media)}) is not supported; prefsweep trains "
                              f"on text only (templates of multimodal families serve text rows)")
        if bad:
            raise ConfigError(f"{where}: unknown {group} key(s) {bad}; valid: {list(keys)}")
        for key, value in mapping.items():
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: {group}.{key} must be a column name string, got {value!r}")
            setattr(attr, key, value)
    if attr.hub_url:
        from trainer.data.hub_datasets import check_layout, snapshot

        attr.path = snapshot(attr.hub_url, revision=attr.revision, folder=attr.folder,
                             what=f"{where}: hf_hub_url")
        check_layout(attr.path, subset=attr.subset, split=attr.split, folder=attr.folder, where=where)
        return attr
    attr.path = local_data_path(info_dir, attr.file_name, where=f"{where}: file_name {attr.file_name!r}")
    return attr


__all__ = ["DatasetAttr", "attr_fields", "get_dataset_attr", "has_magic", "local_data_path", "read_dataset_info"]
