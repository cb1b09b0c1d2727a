"""`DatasetAttr`: one dataset as the loaders see it (files or hub id, formatting, columns, tags), with
LLaMA-Factory's defaults; and the checks of a local data path. Read from `dataset_info.json`
(`trainer.data.dataset_info`) or detected in a TRL-format source (`trainer.data.trl_source`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from trainer.data.reading import data_files
from trainer.errors import ConfigError, DataError


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
    # hub datasets (hf_hub_url)
    hub_url: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    revision: str | None = None
    trl: bool = False
    """A TRL-format dataset: rows are rewritten by `trl_format.to_sharegpt` before conversion."""
    # resolved absolute path of file_name (a file, folder or glob), or the hub snapshot folder
    path: Path | None = None

    @property
    def label(self) -> str:
        """How reports name the data: the file name, or the hub id with subset and split."""
        if self.hub_url:
            return ":".join(p for p in (self.hub_url, self.subset, self.split) if p)
        return self.file_name


def local_data_path(base: Path, file_name: str, *, where: str) -> Path:
    """`base / file_name` (a file, a folder or a glob) checked to hold data files of one supported type."""
    path = base / file_name
    if not has_magic(file_name) and not path.exists():
        raise ConfigError(f"{where} not found at {path}")
    path = path.resolve() if not has_magic(file_name) else base.resolve() / file_name
    try:  # an empty folder, mixed or unsupported file types: a config mistake, caught before loading
        data_files(path)
    except DataError as err:
        raise ConfigError(f"{where}: {err}") from None
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err}") from None
    return path


def has_magic(name: str) -> bool:
    return any(c in name for c in "*?[")


def attr_fields() -> list[str]:
    return [f.name for f in fields(DatasetAttr)]
