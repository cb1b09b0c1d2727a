"""A sequence-classification reward model: scoring generations, and the tiny one built offline.

`eval_reward_model: PATH_OR_HUB_ID` names a model with one output logit
(`AutoModelForSequenceClassification`, `num_labels == 1`, as Skywork/ArmoRM-style reward models are).
It reads each conversation as text: the prompt as the policy's template rendered it, then the answer
(`conversation_text`), so a reward model that shares the policy's tokenizer and template sees exactly
what the policy saw; one with another tokenizer reads the same characters.

`build_tiny_reward_model` (CLI: `prefsweep make-tiny-reward-model`) starts from the tiny policy's
weights with a fresh scalar head and trains it Bradley-Terry (Ouyang et al. 2022, Eq. 1:
loss = -log sigmoid(r(chosen) - r(rejected))) on a dataset's pairs, skipping the first `skip` rows as
the warm-up does, so the demo's own pairs stay unseen. Seeded and deterministic, like the warm-up.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.errors import ConfigError
from trainer.seeded_steps import run_seeded_steps

DEFAULT_STEPS = 100
DEFAULT_BATCH_PAIRS = 4
DEFAULT_LR = 1e-3


def conversation_text(tokenizer, prompt_ids: list[int], response_ids: list[int]) -> str:
    """Prompt (template included, as the policy saw it) followed by the answer, stop tokens dropped."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    while response_ids and response_ids[-1] in stops:
        response_ids = response_ids[:-1]
    return tokenizer.decode(list(prompt_ids) + list(response_ids), skip_special_tokens=False)


def load_reward_model(path_or_id: str, device: torch.device | str = "cpu"):
    """(model, tokenizer) of a one-logit sequence classifier, in eval mode on `device` (safetensors only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        model = AutoModelForSequenceClassification.from_pretrained(path_or_id, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"eval_reward_model: cannot load {path_or_id!r} as a sequence classifier: {err}") from err
    if model.config.num_labels != 1:
        raise ConfigError(f"eval_reward_model: {path_or_id!r} has num_labels={model.config.num_labels}; a reward "
                          "model has one output (num_labels: 1)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # it finds each row's last token by the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def _encode(tokenizer, texts: list[str], device) -> dict[str, torch.Tensor]:
    limit = min(getattr(tokenizer, "model_max_length", 4096) or 4096, 4096)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt",
                      add_special_tokens=False)
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def rewards(model: nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """(B,) scalar reward of each text (differentiable; the caller decides on no_grad)."""
    device = next(model.parameters()).device
    return model(**_encode(tokenizer, texts, device)).logits[:, 0].float()


@torch.no_grad()
def score(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8) -> list[float]:
    return [v for start in range(0, len(texts), batch_size)
            for v in rewards(model, tokenizer, texts[start:start + batch_size]).tolist()]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) rewards -> scalar mean of -log sigmoid(r_c - r_r)."""
    return -F.logsigmoid(chosen - rejected).mean()


def preference_pairs(dataset: str, dataset_dir: str | Path, tokenizer, *, template: str | None = "default",
                     cutoff_len: int = 256, skip: int = 0) -> list[tuple[str, str]]:
    """(chosen text, rejected text) of rows from `skip` on, as `conversation_text` renders them."""
    import tempfile

    from trainer.config.schema import DataArguments
    from trainer.data import load_preference_data
    from trainer.labels import prompt_ids

    data_args = DataArguments(dataset=dataset, dataset_dir=str(dataset_dir), template=template,
                              cutoff_len=cutoff_len, overwrite_cache=True)
    with tempfile.TemporaryDirectory(prefix="prefsweep-rm-") as cache:
        rows = load_preference_data(data_args, tokenizer, stage="dpo", seed=0, cache_dir=cache).train
        pairs = []
        for i in range(skip, len(rows)):
            row = rows[i]
            prompt = prompt_ids(row)
            rejected_prompt = prompt_ids({"input_ids": row["rejected_input_ids"], "labels": row["rejected_labels"]})
            pairs.append((conversation_text(tokenizer, prompt, row["chosen_input_ids"][len(prompt):]),
                          conversation_text(tokenizer, rejected_prompt, row["rejected_input_ids"][len(rejected_prompt):])))
    if not pairs:
        raise ValueError(f"{dataset}: no pairs left after skipping {skip} rows")
    return pairs


def train_bradley_terry(model: nn.Module, tokenizer, pairs: list[tuple[str, str]], *, steps: int = DEFAULT_STEPS,
                        batch_pairs: int = DEFAULT_BATCH_PAIRS, lr: float = DEFAULT_LR, seed: int = 0) -> list[float]:
    """AdamW on the Bradley-Terry loss over seeded batches of `pairs`, cosine-decayed; loss per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))

    def loss_of(index: list[int]) -> torch.Tensor:
        values = rewards(model, tokenizer, [pairs[i][0] for i in index] + [pairs[i][1] for i in index])
        return bradley_terry_loss(*values.chunk(2))

    return run_seeded_steps(model, optimizer, scheduler, steps=steps, n_items=len(pairs),
                            batch_size=batch_pairs, seed=seed, loss_of=loss_of)


def pair_accuracy(model: nn.Module, tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Share of pairs whose chosen text scores strictly higher than its rejected text."""
    chosen = score(model, tokenizer, [c for c, _ in pairs])
    rejected = score(model, tokenizer, [r for _, r in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def build_tiny_reward_model(out_dir: str | Path, base: str | Path, dataset: str, dataset_dir: str | Path, *,
                            skip: int = 0, steps: int = DEFAULT_STEPS, seed: int = 0,
                            template: str | None = "default") -> dict[str, float]:
    """The tiny policy at `base` with a scalar head, trained Bradley-Terry; saved (with its tokenizer) to
    `out_dir`. Returns the training pairs' accuracy before and after and the first/last loss."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    pairs = preference_pairs(dataset, dataset_dir, tokenizer, template=template, skip=skip)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new score head's init
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=torch.float32, use_safetensors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = pair_accuracy(model, tokenizer, pairs)
    losses = train_bradley_terry(model, tokenizer, pairs, steps=steps, seed=seed)
    after = pair_accuracy(model, tokenizer, pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"pairs": len(pairs), "accuracy_before": before, "accuracy_after": after,
            "first_loss": losses[0] if losses else math.nan, "last_loss": losses[-1] if losses else math.nan}


DEMO_REWARD_MODEL = {"dataset": "dpo_en_demo", "dataset_dir": "data", "skip": 64, "seed": 0}
"""The Makefile's `make tiny-reward-model` recipe (the demo pairs after the 64 the demo trains on)."""


def ensure_tiny_reward_model(out_dir: str | Path, base: str | Path) -> bool:
    """Build the demo's tiny reward model (as `make tiny-reward-model`) from the tiny model at `base` unless
    `out_dir` holds one; True when it was built (a `ray job submit` working dir has no git-ignored models/)."""
    if (Path(out_dir) / "config.json").is_file():
        return False
    build_tiny_reward_model(out_dir, base, **DEMO_REWARD_MODEL)
    return True


def main(argv: list[str] | None = None) -> int:
    """`prefsweep make-tiny-reward-model OUT --base MODEL_DIR --data DATASET [--dataset-dir DIR] [--skip N]`."""
    parser = argparse.ArgumentParser(
        prog="prefsweep make-tiny-reward-model",
        description="Train a tiny Bradley-Terry reward model (one-logit sequence classifier) offline from the "
        "tiny policy's weights on a ranking dataset's pairs.",
    )
    parser.add_argument("out", type=Path, help="output directory (reward model + tokenizer)")
    parser.add_argument("--base", type=Path, required=True, help="tiny model dir (make-tiny-model) to start from")
    parser.add_argument("--data", required=True, metavar="DATASET", help="dataset_info.json entry (ranking)")
    parser.add_argument("--dataset-dir", default="data", help="folder of dataset_info.json (default data)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N rows (the demo's own pairs)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"default {DEFAULT_STEPS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="default", help="chat template of the rows (default: default)")
    args = parser.parse_args(argv)
    summary = build_tiny_reward_model(args.out, args.base, args.data, args.dataset_dir, skip=args.skip,
                                      steps=args.steps, seed=args.seed, template=args.template)
    print(f"reward model on {summary['pairs']} pairs, {args.steps} steps: loss {summary['first_loss']:.3f} -> "
          f"{summary['last_loss']:.3f}; chosen ranked first {summary['accuracy_before']:.2f} -> "
          f"{summary['accuracy_after']:.2f} of the training pairs")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
