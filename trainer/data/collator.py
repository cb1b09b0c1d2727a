"""Batch collators: right padding to a multiple of 8, padding labels IGNORE_INDEX (as LLaMA-Factory's).

`PairwiseCollator` stacks the chosen block then the rejected block, so rows [0, B) are chosen and rows
[B, 2B) the rejected response to the same prompts: one forward pass serves both.

Both pass the reference-cache columns (`REFERENCE_COLUMNS`, joined by `trainer.ref_cache`) through as
(B,) tensors when the features carry them: summed log-probs float64, token counts int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.labels import IGNORE_INDEX

# stage -> block of forward rows -> (summed log-prob column, response token count column) per row group,
# in the order of the rows: dpo's one forward is the chosen block then the rejected block; kto runs the
# completions and their KL pairs as two forwards.
REFERENCE_COLUMNS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "dpo": {"pair": [("ref_chosen_logps", "ref_chosen_count"), ("ref_rejected_logps", "ref_rejected_count")]},
    "kto": {"completion": [("ref_logps", "ref_count")], "kl": [("ref_kl_logps", "ref_kl_count")]},
}


def reference_column_names(stage: str) -> list[str]:
    return [name for pairs in REFERENCE_COLUMNS[stage].values() for pair in pairs for name in pair]


def _reference_tensors(features: list[dict[str, Any]], stage: str) -> dict[str, torch.Tensor]:
    """The cached reference columns present in `features`, as (B,) tensors (all or none of a stage's)."""
    names = [name for name in reference_column_names(stage) if name in features[0]]
    return {
        name: torch.tensor(
            [f[name] for f in features], dtype=torch.int64 if name.endswith("_count") else torch.float64
        )
        for name in names
    }


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def pad_sequences(
    input_ids: list[list[int]],
    attention_mask: list[list[int]],
    labels: list[list[int]],
    *,
    pad_token_id: int,
    pad_to_multiple_of: int | None = 8,
) -> dict[str, torch.Tensor]:
    """Right-pad N sequences to L = longest rounded up to `pad_to_multiple_of`; returns (N, L) long tensors."""
    if not input_ids:
        raise ValueError("cannot collate an empty batch")
    for ids, mask, lab in zip(input_ids, attention_mask, labels):
        if not len(ids) == len(mask) == len(lab):
            raise ValueError(
                f"input_ids, attention_mask, labels lengths differ: {len(ids)}, {len(mask)}, {len(lab)}"
            )
    length = _round_up(max(len(ids) for ids in input_ids), pad_to_multiple_of)
    out = {
        "input_ids": torch.full((len(input_ids), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(input_ids), length), dtype=torch.long),
        "labels": torch.full((len(input_ids), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, (ids, mask, lab) in enumerate(zip(input_ids, attention_mask, labels)):
        n = len(ids)
        out["input_ids"][row, :n] = torch.tensor(ids, dtype=torch.long)
        out["attention_mask"][row, :n] = torch.tensor(mask, dtype=torch.long)
        out["labels"][row, :n] = torch.tensor(lab, dtype=torch.long)
    return out


def _pad_token_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token; run get_template_and_fix_tokenizer (it sets pad = eos)"
        )
    return tokenizer.pad_token_id


@dataclass
class PairwiseCollator:
    """Features with chosen_/rejected_ input_ids, attention_mask, labels -> `input_ids`, `attention_mask`,
    `labels` of shape (2B, L): chosen rows first, then rejected rows in the same order."""

    tokenizer: Any
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keys = ("chosen", "rejected")
        batch = pad_sequences(
            [f[f"{k}_input_ids"] for k in keys for f in features],
            [f[f"{k}_attention_mask"] for k in keys for f in features],
            [f[f"{k}_labels"] for k in keys for f in features],
            pad_token_id=_pad_token_id(self.tokenizer),
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batch.update(_reference_tensors(features, "dpo"))
        return batch


@dataclass
class KTOCollator:
    """Features of the feedback encoder -> `input_ids`, `attention_mask`, `labels` (B, L), the same three
    with a `kl_` prefix (B, L_kl), each block padded on its own, and `kto_tags` (B,) bool."""

    tokenizer: Any
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = _pad_token_id(self.tokenizer)
        batch = {}
        for prefix in ("", "kl_"):
            block = pad_sequences(
                [f[f"{prefix}input_ids"] for f in features],
                [f[f"{prefix}attention_mask"] for f in features],
                [f[f"{prefix}labels"] for f in features],
                pad_token_id=pad_id,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
            batch.update({prefix + key: value for key, value in block.items()})
        batch["kto_tags"] = torch.tensor([bool(f["kto_tags"]) for f in features], dtype=torch.bool)
        batch.update(_reference_tensors(features, "kto"))
        return batch
