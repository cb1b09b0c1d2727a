"""Writes tests/fixtures/template_goldens/*.json with LLaMA-Factory 0.9.5's own data pipeline. Run once:

    .venv/bin/python -m tests.make_template_goldens [tiny qwen3 llama3.1 gemma3]

It builds the inputs of tests/template_cases.py, then runs LF (`get_template_and_fix_tokenizer` +
`get_dataset`, stages rm and kto; a fresh tokenizer per template) in its peer venv
(`tests/llamafactory_peer.py`) and writes what LF tokenized, compactly: per template, the tokenizer's eos,
pad, size and chat template (sha256) after LF fixed it, and the rows as [prompt, chosen, rejected] (pairs)
or [prompt, response, kl response, kto_tag] (kto), after checking that the labels mask exactly the prompt.
Keys are the template name, or NAME/VARIANT with the options of tests/template_cases.py's VARIANTS
(`nothink`: every reasoning template with `enable_thinking: false`; `qwen3/preserve`, `qwen/default_system`).
Multimodal-family templates get a stand-in processor: on rows without media LF reads nothing from it.
CI never runs this; tests/test_template_goldens.py compares prefsweep with what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from tests.llamafactory_peer import run_llamafactory
from tests.template_cases import (
    CUTOFF_LEN,
    GOLDENS,
    KTO_DATASET,
    PAIRWISE_DATASETS,
    SHARED_TOKENIZERS,
    VARIANTS,
    build_tiny_tokenizer,
    family_templates,
    write_data,
)
from trainer.data.encoding import IGNORE_INDEX
from trainer.data.templates import TEMPLATES

LF_SCRIPT = """
import hashlib
from unittest.mock import MagicMock
from llamafactory.data.template import TEMPLATES as LF_TEMPLATES

tok_dir, data_dir, cutoff, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
out = {}
for key, name, options in runs:
    multimodal = type(LF_TEMPLATES[name].mm_plugin).__name__ != "BasePlugin"
    entry = {}
    tok = None
    for dataset, stage in ((PAIRWISE, "rm"), (KTO, "kto")):
        # LF's get_dataset with a processor stand-in for multimodal families (what Gemma 3, PaliGemma read)
        processor = MagicMock(boi_token="<start_of_image>", full_image_sequence="<start_of_image>",
                              image_seq_length=256)
        module, tok = lf_dataset(tok_dir, data_dir, name, dataset, stage, cutoff_len=cutoff,
                                 processor=processor if multimodal else None, **options)
        entry[stage] = strip(module["train_dataset"])
    sha = hashlib.sha256((tok.chat_template or "").encode()).hexdigest()
    entry["tokenizer"] = [tok.eos_token, tok.pad_token, len(tok), sha]
    out[key] = entry
print("@@LF@@" + json.dumps(out))
"""
def compact_pair(row: dict) -> list[list[int]]:
    n_prompt = row["chosen_labels"].count(IGNORE_INDEX)
    prompt = row["chosen_input_ids"][:n_prompt]
    for key in ("chosen", "rejected"):
        ids, labels = row[f"{key}_input_ids"], row[f"{key}_labels"]
        assert ids[:n_prompt] == prompt and labels == [IGNORE_INDEX] * n_prompt + ids[n_prompt:], key
    return [prompt, row["chosen_input_ids"][n_prompt:], row["rejected_input_ids"][n_prompt:]]


def compact_kto(row: dict) -> list:
    n, n_kl = row["labels"].count(IGNORE_INDEX), row["kl_labels"].count(IGNORE_INDEX)
    assert row["labels"] == [IGNORE_INDEX] * n + row["input_ids"][n:]
    assert row["kl_labels"] == [IGNORE_INDEX] * n_kl + row["kl_input_ids"][n_kl:]
    return [row["input_ids"][:n], row["input_ids"][n:], row["kl_input_ids"][n_kl:], row["kto_tags"]]


def runs_for(names: list[str]) -> list[tuple[str, str, dict]]:
    """(golden key, template, LF data options): every template, reasoning ones also without thinking."""
    runs = [(name, name, {}) for name in names]
    for variant, (only, options) in VARIANTS.items():
        chosen = [only] if only in names else [n for n in names if only is None and TEMPLATES[n].thinking]
        runs += [(f"{name}/{variant}", name, options) for name in chosen]
    return runs


def main(argv: list[str]) -> int:
    which = argv or ["tiny", "qwen3", "llama3.1", "gemma3"]
    root = Path(tempfile.mkdtemp())
    data = write_data(root)
    GOLDENS.mkdir(parents=True, exist_ok=True)
    for tokenizer in which:
        if tokenizer == "tiny":
            tok_dir, names = build_tiny_tokenizer(root, data), list(TEMPLATES)
        else:
            tok_dir, names = SHARED_TOKENIZERS / tokenizer, family_templates(tokenizer, list(TEMPLATES))
        script = f"PAIRWISE, KTO = {PAIRWISE_DATASETS!r}, {KTO_DATASET!r}\n" + LF_SCRIPT
        lf = run_llamafactory(
            script, tok_dir, data, CUTOFF_LEN, json.dumps(runs_for(names)), cache=root / "cache"
        )
        goldens = {
            key: {
                "tokenizer": entry["tokenizer"],
                "pairs": [compact_pair(r) for r in entry["rm"]],
                "kto": [compact_kto(r) for r in entry["kto"]],
            }
            for key, entry in lf.items()
        }
        text = json.dumps(goldens, separators=(",", ":"), sort_keys=True)
        (GOLDENS / f"{tokenizer}.json").write_text(text + "\n", encoding="utf-8")
        print(tokenizer, len(goldens), "entries", hashlib.sha256(text.encode()).hexdigest()[:12])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
