"""`tokenized_path`, as in LLaMA-Factory 0.9.5: save the tokenized DatasetDict there when the folder is
absent, load it (ignoring the dataset keys) when present.

LF loads whatever the folder holds; we also write `prefsweep_tokenized.json` next to the splits (stage,
template and its options, tokenizer, cutoff_len) and refuse a folder made with other settings, naming what
differs, since training on another template's tokens fails silently. The splits are `train` and
`validation` (LF's names) with LF's column names; the folder is written under a temporary name and renamed,
so a worker that finds it finds it whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets

from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

META_FILE = "prefsweep_tokenized.json"
TRAIN, EVAL = "train", "validation"


def settings(data_args: Any, tokenizer: Any, stage: str, tokenizer_digest: str) -> dict[str, Any]:
    """What the tokens depend on beyond the data: compared when a saved folder is loaded."""
    from trainer.data.templates import get_template, template_options

    template = None if data_args.template is None else get_template(data_args.template, **template_options(data_args))
    return {
        "stage": stage,
        "template": data_args.template if data_args.template is not None else "(the tokenizer's chat_template)",
        "template options": {
            "enable_thinking": getattr(template, "enable_thinking", None),
            "preserve_thinking": getattr(template, "preserve_thinking", None),
            "default_system": getattr(template, "default_system", None),
        },
        "tokenizer": {"name": str(getattr(tokenizer, "name_or_path", "")), "sha256": tokenizer_digest},
        "cutoff_len": data_args.cutoff_len,
    }


def has_tokenized_data(path: str | Path) -> bool:
    """LF's test: the folder exists and is not empty."""
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in now:
        if saved.get(key) == now[key]:
            continue
        if key == "tokenizer":
            same_name = saved.get(key, {}).get("name") == now[key]["name"]
            detail = "same path, other vocabulary/special tokens/chat template" if same_name else (
                f"saved with {saved.get(key, {}).get('name')!r}, now {now[key]['name']!r}")
            out.append(f"tokenizer ({detail})")
        else:
            out.append(f"{key} (saved {saved.get(key)!r}, now {now[key]!r})")
    return out


def load(path: str | Path, expected: dict[str, Any]) -> tuple[datasets.Dataset | None, datasets.Dataset | None]:
    """(train, eval) saved at `path`; ConfigError when it was made with other settings than `expected`."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ConfigError(
            f"tokenized_path {str(path)!r} holds no {META_FILE}, so its template, tokenizer and cutoff_len "
            f"cannot be checked; delete it (or point tokenized_path at a new folder) to tokenize again"
        )
    saved = json.loads(meta_file.read_text(encoding="utf-8"))
    differ = _differences(saved, expected)
    if differ:
        raise ConfigError(
            f"tokenized_path {str(path)!r} was made with another {'; '.join(differ)}; delete it or point "
            f"tokenized_path at a new folder to tokenize again"
        )
    logger.warning("loading the tokenized dataset from %s: the dataset keys of the config are not read", path)
    saved_dict = datasets.load_from_disk(str(path))
    return saved_dict.get(TRAIN), saved_dict.get(EVAL)


def save(
    path: str | Path, train: datasets.Dataset | None, eval_: datasets.Dataset | None, meta: dict[str, Any]
) -> None:
    """Write train/eval and the settings to `path` (atomically: a temporary folder renamed into place)."""
    path = Path(path)
    splits = {name: part for name, part in ((TRAIN, train), (EVAL, eval_)) if part is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "data"))
        for item in (tmp / "data").iterdir():
            item.rename(tmp / item.name)
        (tmp / "data").rmdir()
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # LF treats an empty folder as absent
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("tokenized dataset saved at %s; later runs with `tokenized_path: %s` load it", path, path)
