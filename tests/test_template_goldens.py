"""Every template, token for token against LLaMA-Factory 0.9.5 (goldens in tests/fixtures/template_goldens/).

tests/make_template_goldens.py wrote the goldens once with LF's own pipeline on the inputs of
tests/template_cases.py (tiny tokenizer: every template, reasoning ones also with enable_thinking false;
the real Qwen3 / Llama 3.1 / Gemma 3 tokenizers: the templates of their family). Here prefsweep's encoders
tokenize the same rows and must give the same prompt / chosen / rejected ids (pairs), the same prompt /
response / KL response ids and tags (kto, LF's KL pairing), and leave the tokenizer as LF left it (eos, pad,
size, chat template). Label masks are checked structurally: the labels are the ids with the prompt masked.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.template_cases import (
    CUTOFF_LEN,
    GOLDENS,
    KTO_DATASET,
    PAIRWISE_DATASETS,
    SHARED_TOKENIZERS,
    VARIANTS,
    build_tiny_tokenizer,
    family_templates,
    fresh_tokenizer,
    write_data,
)
from trainer.data.encoding import IGNORE_INDEX, FeedbackEncoder, PairwiseEncoder
from trainer.data.sources import load_source
from trainer.data.templates import TEMPLATES, get_template_and_fix_tokenizer


def _load(name: str) -> dict:
    path = GOLDENS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


GOLDEN = {name: _load(name) for name in ("tiny", "qwen3", "llama3.1", "gemma3")}
CASES = [(tok, key) for tok, goldens in GOLDEN.items() for key in sorted(goldens)]


def test_goldens_cover_every_template():
    """The tiny goldens hold every registered template, and reasoning ones with thinking off too."""
    reasoning = [name for name, entry in TEMPLATES.items() if entry.thinking is not None]
    variants = ["qwen3/preserve", "qwen/default_system"]
    assert sorted(GOLDEN["tiny"]) == sorted([*TEMPLATES, *(f"{n}/nothink" for n in reasoning), *variants])
    assert len(TEMPLATES) == 121 and len(reasoning) == 25
    for tokenizer in ("qwen3", "llama3.1", "gemma3"):
        assert sorted({key.split("/")[0] for key in GOLDEN[tokenizer]}) == family_templates(tokenizer, sorted(TEMPLATES))
    assert set(variants) <= set(GOLDEN["qwen3"])
    assert {"qwen3", "qwen3_nothink", "qwen3_5", "qwen2_vl"} <= set(GOLDEN["qwen3"])
    assert {"llama3", "mllama", "llava_next_llama3"} <= set(GOLDEN["llama3.1"])
    assert {"gemma", "gemma2", "gemma3", "gemma3n"} <= set(GOLDEN["gemma3"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The tokenizer dirs and the normalized rows (one batch per stage, as `datasets.map` would pass)."""
    root = tmp_path_factory.mktemp("template-goldens")
    data = write_data(root)
    batches = {}
    for stage, names in (("dpo", PAIRWISE_DATASETS), ("kto", KTO_DATASET)):
        rows = []
        for name in names.split(","):
            source = load_source(
                name, dataset_dir=str(data), stage=stage, max_samples=None, strict=True, rng=np.random.RandomState(0)
            )
            rows += source.rows.to_list()
        batches[stage] = {key: [row[key] for row in rows] for key in rows[0]}
    dirs = {"tiny": build_tiny_tokenizer(root, data)}
    dirs.update({name: SHARED_TOKENIZERS / name for name in ("qwen3", "llama3.1", "gemma3")})
    return {"dirs": dirs, "batches": batches}


def compact_pairs(columns: dict) -> list[list[list[int]]]:
    out = []
    for i in range(len(columns["chosen_input_ids"])):
        labels = columns["chosen_labels"][i]
        n = labels.count(IGNORE_INDEX)
        prompt = columns["chosen_input_ids"][i][:n]
        for key in ("chosen", "rejected"):
            ids = columns[f"{key}_input_ids"][i]
            assert columns[f"{key}_labels"][i] == [IGNORE_INDEX] * n + ids[n:]
            assert ids[:n] == prompt
        out.append([prompt, columns["chosen_input_ids"][i][n:], columns["rejected_input_ids"][i][n:]])
    return out


def compact_kto(columns: dict) -> list[list]:
    out = []
    for i in range(len(columns["input_ids"])):
        n, n_kl = columns["labels"][i].count(IGNORE_INDEX), columns["kl_labels"][i].count(IGNORE_INDEX)
        ids, kl_ids = columns["input_ids"][i], columns["kl_input_ids"][i]
        assert columns["labels"][i] == [IGNORE_INDEX] * n + ids[n:]
        assert columns["kl_labels"][i] == [IGNORE_INDEX] * n_kl + kl_ids[n_kl:]
        out.append([ids[:n], ids[n:], kl_ids[n_kl:], columns["kto_tags"][i]])
    return out


@pytest.mark.parametrize(("tokenizer", "key"), CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_template_equals_llamafactory(inputs, tokenizer, key):
    path = inputs["dirs"][tokenizer]
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real tokenizers are only in the dev setting)")
    golden = GOLDEN[tokenizer][key]
    name, _, variant = key.partition("/")
    tok = fresh_tokenizer(path)
    template = get_template_and_fix_tokenizer(tok, name, **(VARIANTS[variant][1] if variant else {}))
    pairs = PairwiseEncoder(template=template, tokenizer=tok, cutoff_len=CUTOFF_LEN)(inputs["batches"]["dpo"])
    kto = FeedbackEncoder(template=template, tokenizer=tok, cutoff_len=CUTOFF_LEN)(inputs["batches"]["kto"])
    assert compact_pairs(pairs) == golden["pairs"]
    assert compact_kto(kto) == golden["kto"]
    sha = hashlib.sha256((tok.chat_template or "").encode()).hexdigest()
    assert [tok.eos_token, tok.pad_token, len(tok), sha] == golden["tokenizer"]
