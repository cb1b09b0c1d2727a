"""`template` unset: the tokenizer's own chat_template, token for token, on the real Qwen3 / Llama 3.1 / Gemma 3.

For every row of tests/template_cases.py (system prompts, history with thoughts, demo rows), pairs and KTO:
the ids prefsweep trains on equal `apply_chat_template(conversation, tokenize=True)` of the same messages,
and the labels mask exactly `apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)`: the
loss falls on what the chat template writes for the last assistant turn only. None of the three templates
has `{% generation %}` markers, so the prompt/response boundary is the generation prompt (prefix rule).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.template_cases import (
    KTO_DATASET,
    PAIRWISE_DATASETS,
    SHARED_TOKENIZERS,
    fresh_tokenizer,
    write_data,
)
from trainer.data.encoding import IGNORE_INDEX, FeedbackEncoder, PairwiseEncoder
from trainer.data.sources import load_source
from trainer.data.templates import TokenizerChatTemplate, get_template_and_fix_tokenizer

NAMES = ("qwen3", "llama3.1", "gemma3")
# What each chat template writes for the assistant's "Paris." (row 0): the loss covers exactly this.
RESPONSE = {
    "qwen3": "<think>\n\n</think>\n\nParis.<|im_end|>\n",  # Qwen3 writes an empty thought in the last turn
    "llama3.1": "Paris.<|eot_id|>",
    "gemma3": "Paris.<end_of_turn>\n",
}


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict:
    data = write_data(tmp_path_factory.mktemp("chat-template"))
    out = {}
    for stage, names in (("dpo", PAIRWISE_DATASETS), ("kto", KTO_DATASET)):
        rows = []
        for name in names.split(","):
            rng = np.random.RandomState(0)
            rows += load_source(name, dataset_dir=str(data), stage=stage, max_samples=None, strict=True, rng=rng).rows.to_list()
        out[stage] = {key: [row[key] for row in rows] for key in rows[0]}
    return out


def chat_ids(tok, system: str, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    conversation = ([{"role": "system", "content": system}] if system else []) + messages
    return tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=generation_prompt)["input_ids"]


def assert_masked_as_chat_template(tok, ids, labels, system, prompt, response):
    expected_prompt = chat_ids(tok, system, prompt, generation_prompt=True)
    assert ids == chat_ids(tok, system, prompt + [{"role": "assistant", "content": response}])
    assert labels == [IGNORE_INDEX] * len(expected_prompt) + ids[len(expected_prompt) :]


@pytest.mark.parametrize("name", NAMES)
def test_rows_equal_apply_chat_template(batches, name):
    path = SHARED_TOKENIZERS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real tokenizers are only in the dev setting)")
    tok = fresh_tokenizer(path)
    assert "{% generation %}" not in tok.chat_template
    template = get_template_and_fix_tokenizer(tok, None)
    assert isinstance(template, TokenizerChatTemplate)

    dpo = batches["dpo"]
    pairs = PairwiseEncoder(template=template, tokenizer=tok, cutoff_len=100_000)(dpo)
    assert len(pairs["chosen_input_ids"]) == len(dpo["prompt"]) == 5
    for i, (system, prompt) in enumerate(zip(dpo["system"], dpo["prompt"])):
        for key in ("chosen", "rejected"):
            ids, labels = pairs[f"{key}_input_ids"][i], pairs[f"{key}_labels"][i]
            assert_masked_as_chat_template(tok, ids, labels, system, prompt, dpo[key][i])
    first = pairs["chosen_labels"][0]
    assert tok.decode([t for t in first if t != IGNORE_INDEX]) == RESPONSE[name]

    kto = batches["kto"]
    rows = FeedbackEncoder(template=template, tokenizer=tok, cutoff_len=100_000)(kto)
    kl_responses = kto["response"][-1:] + kto["response"][:-1]  # LF's KL pairing: the previous row's response
    for i, (system, prompt) in enumerate(zip(kto["system"], kto["prompt"])):
        assert_masked_as_chat_template(tok, rows["input_ids"][i], rows["labels"][i], system, prompt, kto["response"][i])
        assert_masked_as_chat_template(tok, rows["kl_input_ids"][i], rows["kl_labels"][i], system, prompt, kl_responses[i])
