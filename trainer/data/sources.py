"""One dataset (a `dataset_info.json` entry, a TRL-format path or hub id) -> a `datasets.Dataset` of normalized
rows, bad rows marked and reported.

Bad rows stay in the dataset (column `_skip` holds the reason, "" for good rows) until after the
`val_size` split, so the split draws from the same rows as LLaMA-Factory's (which splits before its
processors drop anything); `pipeline` removes them before tokenizing. Each dataset logs one line:

    dpo_en_demo (dpo_en_demo.json): skipped 3 of 300 rows (missing chosen: rows 4, 17; empty response: row 9)

With `strict_data` the first bad row raises a DataError naming the file, the row and the reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from trainer.data import hub_datasets
from trainer.data.conversion import BadRow, convert_record
from trainer.data.dataset_info import DatasetAttr, get_dataset_attr
from trainer.data.reading import Unreadable, read_records
from trainer.data.trl_format import to_sharegpt
from trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ROWS_SHOWN = 5  # row numbers listed per reason in the report

_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_BOOK = {
    "_skip": datasets.Value("string"),
    "_source": datasets.Value("string"),
    "_row": datasets.Value("string"),
}
FEATURES = {
    "dpo": datasets.Features(
        {
            "prompt": _MESSAGES,
            "system": datasets.Value("string"),
            "chosen": datasets.Value("string"),
            "rejected": datasets.Value("string"),
            **_BOOK,
        }
    ),
    "kto": datasets.Features(
        {
            "prompt": _MESSAGES,
            "system": datasets.Value("string"),
            "response": datasets.Value("string"),
            "kto_tag": datasets.Value("bool"),
            **_BOOK,
        }
    ),
}
_EMPTY_ROW = {
    "dpo": {"prompt": [], "system": "", "chosen": "", "rejected": ""},
    "kto": {"prompt": [], "system": "", "response": "", "kto_tag": False},
}


@dataclass
class Source:
    """A loaded dataset: normalized rows (bad ones marked in `_skip`) and the skip counts per reason."""

    name: str
    attr: DatasetAttr
    rows: datasets.Dataset
    skipped: Counter = field(default_factory=Counter)
    bad_rows: dict[str, list[str]] = field(default_factory=dict)  # reason -> row locations


def check_stage(attr: DatasetAttr, stage: str) -> None:
    """Dataset kinds each stage takes, as LLaMA-Factory (`_get_merged_dataset`): dpo pairs, kto tags."""
    where = f"dataset {attr.name!r}"
    if attr.trl:
        kind = "preference pairs (chosen/rejected)" if attr.ranking else "unpaired KTO rows (completion/label)"
        needed = {"dpo": True, "kto": False}.get(stage)
        if needed is not None and attr.ranking != needed:
            wants = "preference pairs" if needed else "unpaired rows (prompt, completion, label)"
            raise ConfigError(f"{where} holds TRL {kind}, but stage {stage} needs {wants}")
        if needed is not None:
            return
    if stage == "dpo":
        if not attr.ranking:
            raise ConfigError(
                f"{where} has ranking: false, but stage dpo needs pairwise data: "
                f"set ranking: true with chosen and rejected columns in dataset_info.json"
            )
        if not attr.chosen or not attr.rejected:
            raise ConfigError(f"{where} has ranking: true but no columns.chosen / columns.rejected")
    elif stage == "kto":
        if attr.ranking:
            raise ConfigError(
                f"{where} has ranking: true, but stage kto needs unpaired data with a kto_tag column "
                f"(LLaMA-Factory refuses pairwise data for kto too: split each pair into a desirable "
                f"and an undesirable row with a boolean kto_tag)"
            )
        if not attr.kto_tag:
            raise ConfigError(
                f"{where} has no columns.kto_tag: stage kto needs a boolean desirable/undesirable column"
            )
    else:
        raise ConfigError(f"stage {stage!r} is unknown; use dpo or kto")


def _sample(records: list, num_samples: int, rng: np.random.RandomState) -> list:
    """LLaMA-Factory's `num_samples`: a permutation, repeated with replacement when it asks for more rows."""
    indexes = rng.permutation(len(records))[:num_samples]
    if num_samples > len(indexes):
        indexes = np.concatenate((indexes, rng.choice(len(records), num_samples - len(indexes))), axis=0)
    return [records[i] for i in indexes]


def load_source(
    name: str,
    *,
    dataset_dir: str,
    stage: str,
    max_samples: int | None,
    strict: bool,
    rng: np.random.RandomState,
) -> Source:
    """Read, convert and report one dataset; raises DataError when it has no usable row."""
    attr = get_dataset_attr(name, dataset_dir)
    check_stage(attr, stage)
    if attr.hub_url:
        records = hub_datasets.read_records(attr.path, subset=attr.subset, split=attr.split, folder=attr.folder)
    else:
        records = read_records(attr.path)
    if attr.num_samples is not None:
        records = _sample(records, attr.num_samples, rng)
    if max_samples is not None:  # the first N rows, good or bad, as LF
        records = records[:max_samples]

    source_label = f"{name} ({attr.label})" if attr.label != name else name
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    bad_rows: dict[str, list[str]] = {}
    for location, record in records:
        try:
            if isinstance(record, Unreadable):
                raise BadRow(record.reason, record.detail)
            if attr.trl:
                record = to_sharegpt(record, ranking=attr.ranking)
            row = {**convert_record(record, attr), "_skip": ""}
        except BadRow as bad:
            if strict:
                raise DataError(
                    f"{attr.path}: row {location}: {bad.reason}: {bad.detail} (strict_data is on)"
                ) from None
            skipped[bad.reason] += 1
            bad_rows.setdefault(bad.reason, []).append(location)
            row = {**_EMPTY_ROW[stage], "_skip": bad.reason}
        rows.append({**row, "_source": source_label, "_row": location})

    total, bad = len(rows), sum(skipped.values())
    if bad:
        logger.warning("%s", skip_report(source_label, total, bad_rows))
    else:
        logger.info("%s: %d rows", source_label, total)
    if total == bad:
        why = f": {_reasons(bad_rows)}" if bad else ""
        raise DataError(f"{source_label}: no usable rows ({bad} of {total} skipped{why})")
    return Source(
        name=name,
        attr=attr,
        rows=datasets.Dataset.from_list(rows, features=FEATURES[stage]),
        skipped=skipped,
        bad_rows=bad_rows,
    )


def _reasons(bad_rows: dict[str, list[str]]) -> str:
    parts = []
    for reason, locations in bad_rows.items():
        shown = ", ".join(locations[:ROWS_SHOWN])
        more = f" and {len(locations) - ROWS_SHOWN} more" if len(locations) > ROWS_SHOWN else ""
        parts.append(f"{reason}: {'row' if len(locations) == 1 else 'rows'} {shown}{more}")
    return "; ".join(parts)


def skip_report(label: str, total: int, bad_rows: dict[str, list[str]]) -> str:
    """The one-line report of a dataset's skipped rows."""
    bad = sum(len(locations) for locations in bad_rows.values())
    return f"{label}: skipped {bad} of {total} rows ({_reasons(bad_rows)})"
