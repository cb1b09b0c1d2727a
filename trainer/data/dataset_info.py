"""`dataset_info.json`: LLaMA-Factory's registry of local datasets, read into typed entries.

Only local files are served (no hub). Column and tag names default to LLaMA-Factory's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from trainer.data.reading import data_files
from trainer.errors import ConfigError, DataError

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


@dataclass
class DatasetAttr:
    """One entry of `dataset_info.json`, with LLaMA-Factory's defaults filled in."""

    name: str
    file_name: str
    formatting: str = "alpaca"
    ranking: bool = False
    num_samples: int | None = None
    # columns
    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    messages: str | None = "conversations"
    system: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None
    # sharegpt tags
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"
    # resolved absolute path of file_name
    path: Path | None = None


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


def get_dataset_attr(name: str, dataset_dir: str | Path) -> DatasetAttr:
    """The validated entry for dataset `name`; raises ConfigError naming the file and the key."""
    info_path = Path(dataset_dir) / DATASET_INFO
    info = read_dataset_info(dataset_dir)
    if name not in info:
        import difflib

        near = difflib.get_close_matches(name, list(info), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; it has: {', '.join(sorted(info)) or 'nothing'}"
        raise ConfigError(f"dataset {name!r} is not in {info_path}{hint}")
    entry = info[name]
    where = f"{info_path} entry {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object")
    if "file_name" not in entry:
        hub = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry]
        extra = f" ({hub[0]} is not supported offline; download it and point file_name at it)" if hub else ""
        raise ConfigError(f"{where}: has no file_name{extra}")
    known = {"file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset", "folder"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    if not isinstance(entry["file_name"], str) or not entry["file_name"].strip():
        raise ConfigError(f"{where}: file_name must be a file or folder name, got {entry['file_name']!r}")
    attr = DatasetAttr(name=name, file_name=entry["file_name"])
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
    path = Path(dataset_dir) / attr.file_name
    if not path.exists():
        raise ConfigError(f"{where}: file_name {attr.file_name!r} not found at {path}")
    attr.path = path.resolve()
    try:  # an empty folder, mixed or unsupported file types: a config mistake, caught before loading
        data_files(attr.path)
    except DataError as err:
        raise ConfigError(f"{where}: file_name {attr.file_name!r}: {err}") from None
    except OSError as err:
        raise ConfigError(f"{where}: file_name {attr.file_name!r} cannot be read: {err}") from None
    return attr


def attr_fields() -> list[str]:
    return [f.name for f in fields(DatasetAttr)]
