"""Truncation (LLaMA-Factory's infer_seqlen), label alignment, the KTO KL pairs, and the collators."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from trainer.config import DataArguments
from trainer.data import load_preference_data, make_collator
from trainer.data.collator import KTOCollator, PairwiseCollator
from trainer.data.encoding import IGNORE_INDEX, FeedbackEncoder, PairwiseEncoder, infer_seqlen
from trainer.data.templates import EOS, TEMPLATES, Template, get_template_and_fix_tokenizer
from trainer.errors import ConfigError
from trainer.tiny_model import build_tiny_model

X = IGNORE_INDEX
PROMPT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.json"
    corpus.write_text(json.dumps([m["content"] for m in PROMPT] + ["Paris is the capital of France."]))
    return build_tiny_model(root / "tiny", [corpus], vocab_size=1024, seed=0)


@pytest.fixture
def tok(tok_dir):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    get_template_and_fix_tokenizer(tokenizer, "default")
    return tokenizer


@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [
        # response short (2*20 < 100): it keeps all 20 tokens, the prompt gets the other 80
        (300, 20, 100, (80, 20)),
        # both fit: nothing is cut
        (10, 5, 100, (10, 5)),
        # prompt short (2*30 < 100), response long: the prompt keeps 30, the response gets 100 - 30 = 70
        (30, 200, 100, (30, 70)),
        # both long: response gets int(100 * 250 / 400) = int(62.5) = 62, prompt 100 - 62 = 38
        (150, 250, 100, (38, 62)),
        # both exactly half: neither branch "< cutoff" fires; int(100 * 50 / 100) = 50 each
        (50, 50, 100, (50, 50)),
        # response 2*2 = 4 is not < 4 and the prompt is long: int(4 * 2 / 1002) = 0 -> empty response
        (1000, 2, 4, (4, 0)),
    ],
)
def test_infer_seqlen_golden(source, target, cutoff, expected):
    assert infer_seqlen(source, target, cutoff) == expected


@given(st.integers(0, 500), st.integers(0, 500), st.integers(2, 600))
def test_infer_seqlen_fits_and_only_cuts(source, target, cutoff):
    new_source, new_target = infer_seqlen(source, target, cutoff)
    assert 0 <= new_source <= source and 0 <= new_target <= target
    assert new_source + new_target <= cutoff
    if source + target <= cutoff:
        assert (new_source, new_target) == (source, target)


@settings(max_examples=40, deadline=None)
@given(cutoff=st.integers(2, 90))
def test_truncation_keeps_labels_aligned(tok_dir, cutoff):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    template = get_template_and_fix_tokenizer(tok, "default")
    chosen, rejected = "Paris.", "I am not sure, it could be Lyon or Marseille."
    full_prompt, full_chosen = template.encode_oneturn(
        tok, PROMPT + [{"role": "assistant", "content": chosen}]
    )
    _, full_rejected = template.encode_oneturn(tok, PROMPT + [{"role": "assistant", "content": rejected}])
    n_prompt, n_response = infer_seqlen(len(full_prompt), max(len(full_chosen), len(full_rejected)), cutoff)

    out = PairwiseEncoder(template=template, tokenizer=tok, cutoff_len=cutoff).encode(
        PROMPT, chosen, rejected, ""
    )
    if n_response == 0:
        assert out is None
        return
    for key, full_response in (("chosen", full_chosen), ("rejected", full_rejected)):
        ids, labels = out[f"{key}_input_ids"], out[f"{key}_labels"]
        assert len(ids) <= cutoff
        assert ids == full_prompt[:n_prompt] + full_response[:n_response]
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]  # every response label is the token at its own position
        assert out[f"{key}_attention_mask"] == [1] * len(ids)


def test_efficient_eos_goes_after_the_response(tok):
    template = Template(
        name="custom", user=("U: {{content}}\n",), assistant=("{{content}}",), efficient_eos=True
    )
    _, response = template.encode_oneturn(
        tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    )
    assert response == tok.encode("Yo", add_special_tokens=False) + [tok.eos_token_id]
    assert Template(name="x").assistant == ("{{content}}", EOS)  # LF's default assistant slot carries eos


def test_feedback_encoder_pairs_each_prompt_with_the_previous_response(tok):
    template = TEMPLATES["default"]
    encoder = FeedbackEncoder(template=template, tokenizer=tok, cutoff_len=256)
    prompts = [[{"role": "user", "content": q}] for q in ("Q one", "Q two", "Q three")]
    batch = {
        "prompt": prompts,
        "response": ["A one", "A two", "A three"],
        "kto_tag": [True, False, True],
        "system": ["", "", ""],
        "_source": ["kto (kto.json)"] * 3,
        "_row": ["0", "1", "2"],
    }
    out = encoder(batch)
    for i, kl_from in enumerate([2, 0, 1]):
        p, r = template.encode_oneturn(
            tok, prompts[i] + [{"role": "assistant", "content": batch["response"][i]}]
        )
        _, kl = template.encode_oneturn(
            tok, prompts[i] + [{"role": "assistant", "content": batch["response"][kl_from]}]
        )
        assert out["input_ids"][i] == p + r
        assert out["labels"][i] == [IGNORE_INDEX] * len(p) + r
        assert out["kl_input_ids"][i] == p + kl
        assert out["kl_labels"][i] == [IGNORE_INDEX] * len(p) + kl
    assert out["kto_tags"] == [True, False, True]


def test_kl_pairs_wrap_within_each_map_batch_of_1000(tok_dir, tmp_path):
    """LF rotates responses inside each `datasets.map` batch (preprocessing_batch_size=1000): with 1001 rows
    row 0 takes row 999's response, and row 1000, alone in its batch, is paired with its own response."""
    rows = [
        {"instruction": f"Question {i}", "output": f"Answer {i}", "label": i % 2 == 0} for i in range(1001)
    ]
    (tmp_path / "kto.json").write_text(json.dumps(rows))
    info = {
        "kto": {
            "file_name": "kto.json",
            "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    args = DataArguments(dataset="kto", dataset_dir=str(tmp_path), template="default", cutoff_len=64)
    train = load_preference_data(args, tok, stage="kto", seed=0, cache_dir=tmp_path / "cache").train

    def kl_text(i):
        row = train[i]
        return tok.decode([t for t in row["kl_labels"] if t != IGNORE_INDEX])

    assert kl_text(0) == "Answer 999<|im_end|>\n"
    assert kl_text(1) == "Answer 0<|im_end|>\n"
    assert kl_text(999) == "Answer 998<|im_end|>\n"
    assert kl_text(1000) == "Answer 1000<|im_end|>\n"


def test_pairwise_collator_hand_checked():
    """Two pairs, chosen lengths 3 and 5, rejected 4 and 9: L = 9 rounded up to 16; rows 0-1 chosen, 2-3 rejected."""
    features = [
        {
            "chosen_input_ids": [5, 6, 7],
            "chosen_attention_mask": [1, 1, 1],
            "chosen_labels": [-100, 6, 7],
            "rejected_input_ids": [5, 6, 8, 9],
            "rejected_attention_mask": [1, 1, 1, 1],
            "rejected_labels": [-100, 6, 8, 9],
        },
        {
            "chosen_input_ids": [1, 2, 3, 4, 5],
            "chosen_attention_mask": [1, 1, 1, 1, 1],
            "chosen_labels": [-100, -100, 3, 4, 5],
            "rejected_input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9],
            "rejected_attention_mask": [1] * 9,
            "rejected_labels": [-100, -100, 3, 4, 5, 6, 7, 8, 9],
        },
    ]
    batch = PairwiseCollator(SimpleNamespace(pad_token_id=0))(features)
    P = 0
    expected_ids = [
        [5, 6, 7] + [P] * 13,
        [1, 2, 3, 4, 5] + [P] * 11,
        [5, 6, 8, 9] + [P] * 12,
        [1, 2, 3, 4, 5, 6, 7, 8, 9] + [P] * 7,
    ]
    expected_labels = [
        [X, 6, 7] + [X] * 13,
        [X, X, 3, 4, 5] + [X] * 11,
        [X, 6, 8, 9] + [X] * 12,
        [X, X, 3, 4, 5, 6, 7, 8, 9] + [X] * 7,
    ]
    expected_mask = [[1] * n + [0] * (16 - n) for n in (3, 5, 4, 9)]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    torch.testing.assert_close(batch["input_ids"], torch.tensor(expected_ids))
    torch.testing.assert_close(batch["labels"], torch.tensor(expected_labels))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor(expected_mask))


def test_pairwise_collator_length_is_a_multiple_of_8_even_when_exact():
    feature = {
        f"{k}_{c}": [1] * 8 for k in ("chosen", "rejected") for c in ("input_ids", "attention_mask", "labels")
    }
    assert PairwiseCollator(SimpleNamespace(pad_token_id=0))([feature])["input_ids"].shape == (2, 8)
    feature["rejected_input_ids"] = feature["rejected_attention_mask"] = feature["rejected_labels"] = [1] * 9
    assert PairwiseCollator(SimpleNamespace(pad_token_id=0))([feature])["input_ids"].shape == (2, 16)


def test_kto_collator_pads_each_block_on_its_own():
    features = [
        {
            "input_ids": [1, 2, 3],
            "attention_mask": [1, 1, 1],
            "labels": [X, 2, 3],
            "kl_input_ids": list(range(10)),
            "kl_attention_mask": [1] * 10,
            "kl_labels": [X] * 5 + list(range(5, 10)),
            "kto_tags": True,
        },
        {
            "input_ids": [4, 5],
            "attention_mask": [1, 1],
            "labels": [X, 5],
            "kl_input_ids": [4, 6],
            "kl_attention_mask": [1, 1],
            "kl_labels": [X, 6],
            "kto_tags": False,
        },
    ]
    batch = KTOCollator(SimpleNamespace(pad_token_id=9))(features)
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[1, 2, 3] + [9] * 5, [4, 5] + [9] * 6]))
    torch.testing.assert_close(batch["labels"], torch.tensor([[X, 2, 3] + [X] * 5, [X, 5] + [X] * 6]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1] * 3 + [0] * 5, [1] * 2 + [0] * 6]))
    assert (
        batch["kl_input_ids"].shape == batch["kl_labels"].shape == batch["kl_attention_mask"].shape == (2, 16)
    )
    torch.testing.assert_close(batch["kl_input_ids"][1], torch.tensor([4, 6] + [9] * 14))
    torch.testing.assert_close(batch["kl_labels"][0], torch.tensor([X] * 5 + list(range(5, 10)) + [X] * 6))
    assert batch["kto_tags"].dtype == torch.bool and batch["kto_tags"].tolist() == [True, False]


def test_make_collator_by_stage(tok):
    assert isinstance(make_collator(tok, stage="dpo"), PairwiseCollator)
    assert isinstance(make_collator(tok, stage="kto"), KTOCollator)
    with pytest.raises(ConfigError, match="stage 'sft'"):
        make_collator(tok, stage="sft")


def test_collator_pads_with_the_tokenizers_pad_token(tok):
    encoder = PairwiseEncoder(template=TEMPLATES["default"], tokenizer=tok, cutoff_len=256)
    features = [
        encoder.encode(PROMPT, "Paris.", "It is Lyon, I think.", ""),
        encoder.encode(PROMPT[:1], "Yes.", "No.", ""),
    ]
    batch = make_collator(tok, stage="dpo")(features)
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] % 8 == 0
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["input_ids"][pad] == tok.pad_token_id).all() and (
        batch["labels"][pad] == IGNORE_INDEX
    ).all()
    for row, feature in enumerate(features + features):
        key = "chosen" if row < 2 else "rejected"
        n = len(feature[f"{key}_input_ids"])
        assert batch["input_ids"][row, :n].tolist() == feature[f"{key}_input_ids"]
        assert batch["labels"][row, :n].tolist() == feature[f"{key}_labels"]
