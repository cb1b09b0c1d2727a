"""`prefsweep tokenize CONFIG [KEY=VALUE ...]`: tokenize a config's data as training would, save it like
`tokenized_path` does, and print a few examples with the masked part marked, so a user sees what the
model will be trained on before paying for a GPU.

    prefsweep tokenize configs/tiny_dpo.yaml template=qwen3_nothink --examples 2

The dataset goes to `tokenized_path` (default: OUTPUT_DIR/tokenized); a later run with
`tokenized_path: that folder` loads it instead of tokenizing again. In the printout, text inside
MASK_OPEN ... MASK_CLOSE carries label -100 (no loss: the prompt); the rest is trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError, DataError
from trainer.labels import IGNORE_INDEX

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def render(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """The sequence as text, each run of masked tokens (label -100) inside MASK_OPEN ... MASK_CLOSE."""
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
            pieces.append(f"{MASK_OPEN}{text}{MASK_CLOSE}" if labels[start] == IGNORE_INDEX else text)
            start = end
    return "".join(pieces)


def _sequences(row: dict[str, Any], stage: str) -> list[tuple[str, list[int], list[int]]]:
    if stage == "dpo":
        return [(key, row[f"{key}_input_ids"], row[f"{key}_labels"]) for key in ("chosen", "rejected")]
    tag = "desirable" if row["kto_tags"] else "undesirable"
    return [(f"completion ({tag})", row["input_ids"], row["labels"]), ("KL row", row["kl_input_ids"], row["kl_labels"])]


def describe(tokenizer: Any, dataset: Any, stage: str, n_examples: int) -> str:
    """Up to `n_examples` rows of `dataset`, each sequence rendered with its token counts."""
    lines = []
    for i in range(min(n_examples, len(dataset))):
        for name, ids, labels in _sequences(dataset[i], stage):
            masked = sum(label == IGNORE_INDEX for label in labels)
            lines.append(f"--- example {i}, {name}: {len(ids)} tokens, {masked} masked, {len(ids) - masked} trained")
            lines.append(render(tokenizer, ids, labels))
    return "\n".join(lines)


def tokenize(config: str, overrides: list[str], *, out: str | None, n_examples: int) -> str:
    """Tokenize and save the data of `config`; returns the report to print."""
    from trainer.config import load_config
    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    cfg = load_config(config, overrides)
    path = Path(out or cfg.data.tokenized_path or cfg.output_dir / "tokenized")
    data_args = dataclasses.replace(cfg.data, tokenized_path=str(path))
    args = cfg.training_arguments(device_independent=True)
    tokenizer = load_tokenizer(cfg.model)
    stage = cfg.finetuning.stage
    data = load_preference_data(data_args, tokenizer, stage=stage, seed=args.seed, do_train=args.do_train)
    template = cfg.data.template or "the tokenizer's chat_template"
    sizes = ", ".join(f"{len(part)} {name}" for name, part in (("train", data.train), ("eval", data.eval)) if part)
    report = [f"{sizes} examples (stage {stage}, template {template}, cutoff_len {cfg.data.cutoff_len}) in {path}"]
    if data.skipped:
        report.append("skipped rows: " + ", ".join(f"{reason}: {n}" for reason, n in data.skipped.items()))
    report.append(f"text inside {MASK_OPEN} {MASK_CLOSE} is masked (label -100, no loss); the rest is trained on")
    shown = data.train if data.train is not None else data.eval
    if shown is None:
        raise ConfigError("nothing to tokenize: do_train is not true and there is no eval_dataset or val_size")
    report.append(describe(tokenizer, shown, stage, n_examples))
    return "\n".join(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefsweep tokenize",
        description="Tokenize a config's data as training would, save it (tokenized_path, default "
        "OUTPUT_DIR/tokenized) and print examples with the masked prompt marked.",
    )
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. template=llama3")
    parser.add_argument("--examples", type=int, default=3, help="rows to print (default 3)")
    parser.add_argument("--out", help="folder to save the tokenized dataset in (default: tokenized_path)")
    args = parser.parse_args(argv)
    try:
        print(tokenize(args.config, args.overrides, out=args.out, n_examples=args.examples))
    except (ConfigError, DataError) as err:
        print(f"prefsweep tokenize: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
