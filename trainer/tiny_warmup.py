"""A short, seeded SFT pass that turns the random tiny model into one whose log-probs mean something.

DPO-style losses move the policy *relative to* a reference. On a random model the reference assigns
near-uniform log-probs to every answer, the implicit rewards start as noise, and 14 demo steps give
reward accuracies that rank noise (0.0 for sigmoid on 8 eval pairs was seen). A few hundred steps of
next-token training on the demo data's prompts and chosen answers give the model the data's
vocabulary and style first, as a real instruction-tuned starting point would have.

Which rows: the data is tokenized by the project's own pipeline (same template and cutoff as the demo
config, so the warm-up sees the token sequences DPO will see), and the first `skip` rows are left
out: the demo trains and evaluates on the first `max_samples` rows, so with `skip >= max_samples` its
pairs, train and eval alike, are never seen by the warm-up.

Deterministic: the batch order comes from a `torch.Generator` seeded with `seed`, the dropout-free
model has no other randomness, and the caller's global RNG state is untouched. On 2 CPU cores the
default 300 steps take ~20-40 s.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trainer.logps import IGNORE_INDEX, sequence_logps
from trainer.seeded_steps import run_seeded_steps

DEFAULT_STEPS = 150
DEFAULT_BATCH_SIZE = 8
DEFAULT_LR = 3e-3
DEMO_WARMUP = {"dataset": "dpo_en_demo", "dataset_dir": "data", "skip": 64, "seed": 0}
"""What `make tiny-model` passes (`--warmup dpo_en_demo --warmup-skip 64`): the demo trains on the first 64 pairs."""


@dataclass(frozen=True)
class WarmupData:
    """Token rows of chosen conversations (prompt + chosen answer), unpadded."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    """IGNORE_INDEX on prompt tokens: the chosen answer's tokens are what `answer_nll` scores."""


def chosen_rows(
    dataset: str, dataset_dir: str | Path, tokenizer, *, template: str | None = "default",
    cutoff_len: int = 256, skip: int = 0, limit: int | None = None,
) -> WarmupData:
    """The chosen rows of `dataset` (a `dataset_info.json` entry, ranking) as the dpo pipeline tokenizes them.

    Rows `[skip, skip + limit)` of the usable rows, in file order. The tokenized cache goes to a
    temporary folder: nothing in the user's `datasets` cache depends on a half-built model.
    """
    from trainer.config import DataArguments
    from trainer.data import load_preference_data

    data_args = DataArguments(dataset=dataset, dataset_dir=str(dataset_dir), template=template,
                              cutoff_len=cutoff_len, overwrite_cache=True)
    with tempfile.TemporaryDirectory(prefix="prefsweep-warmup-") as cache:
        data = load_preference_data(data_args, tokenizer, stage="dpo", seed=0, cache_dir=cache)
        end = len(data.train) if limit is None else min(len(data.train), skip + limit)
        if skip >= end:
            raise ValueError(f"{dataset}: {len(data.train)} usable rows, none left after skipping {skip}")
        rows = data.train.select(range(skip, end))
        return WarmupData(input_ids=list(rows["chosen_input_ids"]), labels=list(rows["chosen_labels"]))


def _batch(rows: WarmupData, index: list[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L) input_ids, attention_mask and answer labels of rows `index`, right-padded."""
    width = max(len(rows.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    labels = torch.full((len(index), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        n = len(rows.input_ids[i])
        ids[row, :n] = torch.tensor(rows.input_ids[i])
        labels[row, :n] = torch.tensor(rows.labels[i])
        mask[row, :n] = 1
    return ids, mask, labels


@torch.no_grad()
def answer_nll(model: nn.Module, rows: WarmupData, *, pad_id: int, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per chosen-answer token (nats) over `rows`: the number the warm-up lowers."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows.input_ids), batch_size):
        ids, mask, labels = _batch(rows, list(range(start, min(start + batch_size, len(rows.input_ids)))), pad_id)
        logps = sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels, chunk_size=None)
        total -= float(logps.sum.sum())
        count += int(logps.count.sum())
    model.train(was_training)
    return total / max(count, 1)


def warm_up(
    model: nn.Module, rows: WarmupData, *, pad_id: int, steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, seed: int = 0,
) -> list[float]:
    """Train `model` in place for `steps` AdamW steps of next-token loss over whole rows (prompt and
    answer: the prompts are language too, and there are few of them); returns the loss per step.

    Cosine decay after a 10% linear warm-up, as the demo config trains. Batches cycle through a seeded
    permutation of the rows, reshuffled each pass.
    """
    if steps <= 0:
        return []
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def loss_of(index: list[int]) -> Tensor:
        ids, mask, _ = _batch(rows, index, pad_id)
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, IGNORE_INDEX)).loss

    return run_seeded_steps(model, optimizer, scheduler, steps=steps, n_items=len(rows.input_ids),
                            batch_size=batch_size, seed=seed, loss_of=loss_of)


def warm_up_model_dir(
    model_dir: str | Path, dataset: str, dataset_dir: str | Path, *, skip: int = 0, steps: int = DEFAULT_STEPS,
    seed: int = 0, template: str | None = "default", cutoff_len: int = 256,
) -> dict[str, float]:
    """Load the model saved in `model_dir`, warm it up on `dataset` (rows from `skip` on), save it back.

    Returns the first and last training loss and the answer NLL of the warm-up rows before and after.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = chosen_rows(dataset, dataset_dir, tokenizer, template=template, cutoff_len=cutoff_len, skip=skip)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = answer_nll(model, rows, pad_id=tokenizer.pad_token_id)
    losses = warm_up(model, rows, pad_id=tokenizer.pad_token_id, steps=steps, seed=seed)
    after = answer_nll(model, rows, pad_id=tokenizer.pad_token_id)
    model.save_pretrained(model_dir)
    return {"rows": len(rows.input_ids), "first_loss": losses[0] if losses else math.nan,
            "last_loss": losses[-1] if losses else math.nan, "answer_nll_before": before, "answer_nll_after": after}


def add_arguments(parser) -> None:
    """The warm-up options of `prefsweep make-tiny-model`."""
    group = parser.add_argument_group("warm-up (a short SFT pass after the random init)")
    group.add_argument("--warmup", metavar="DATASET",
                       help="dataset_info.json entry (ranking) whose prompts and chosen answers warm the model up")
    group.add_argument("--warmup-dataset-dir", default="data", help="folder of dataset_info.json (default data)")
    group.add_argument("--warmup-skip", type=int, default=0, metavar="N",
                       help="leave out the first N rows (the demo's own pairs: its max_samples); default 0")
    group.add_argument("--warmup-steps", type=int, default=DEFAULT_STEPS, help=f"default {DEFAULT_STEPS}")
    group.add_argument("--warmup-template", default="default", help="chat template of the rows (default: default)")


def run_from_args(model_dir: Path, args) -> None:
    if not args.warmup:
        return
    summary = warm_up_model_dir(
        model_dir, args.warmup, args.warmup_dataset_dir, skip=args.warmup_skip, steps=args.warmup_steps,
        seed=args.seed, template=args.warmup_template,
    )
    print(f"warm-up on {summary['rows']} rows of {args.warmup}, {args.warmup_steps} steps: loss "
          f"{summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; chosen-answer NLL "
          f"{summary['answer_nll_before']:.3f} -> {summary['answer_nll_after']:.3f} nats/token")
