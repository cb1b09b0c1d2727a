"""The tiny model's SFT warm-up (`trainer.tiny_warmup`): it lowers the chosen answers' NLL on pairs it never
saw, from the uniform-guess level a random model sits at, and the same seed gives the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.tiny_warmup import WarmupData, answer_nll, chosen_rows, warm_up

VOCAB = 512  # the session tiny model's


@pytest.fixture(scope="module")
def rows(tiny):
    """(tokenizer, the first 24 of the 32 pairs for training, the last 8 held out)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    train = chosen_rows("pairs", tiny["data"], tokenizer, cutoff_len=128, limit=24)
    held_out = chosen_rows("pairs", tiny["data"], tokenizer, cutoff_len=128, skip=24)
    return tokenizer, train, held_out


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_rows_are_split_where_asked(rows):
    _, train, held_out = rows
    assert (len(train.input_ids), len(held_out.input_ids)) == (24, 8)
    assert not {tuple(r) for r in train.input_ids} & {tuple(r) for r in held_out.input_ids}
    for ids, labels in zip(train.input_ids, train.labels):
        answer = [i for i, label in enumerate(labels) if label != -100]
        assert answer and answer == list(range(answer[0], len(ids)))  # the answer is the row's tail


def test_warm_up_lowers_held_out_answer_nll(tiny, rows):
    """A random init (weights ~N(0, 0.02)) gives near-zero logits: NLL ~ ln(512) = 6.238 nats per answer
    token. 30 steps on 24 other pairs must take the held-out answers well below that (a unigram fit of
    the data alone is worth ~1 nat; a warm-up that trained nothing, or the wrong tokens, stays at 6.2)."""
    tokenizer, train, held_out = rows
    model = load(tiny["model"])
    before = answer_nll(model, held_out, pad_id=tokenizer.pad_token_id)
    assert before == pytest.approx(math.log(VOCAB), abs=0.1)
    losses = warm_up(model, train, pad_id=tokenizer.pad_token_id, steps=30, seed=0)
    after = answer_nll(model, held_out, pad_id=tokenizer.pad_token_id)
    assert losses[-1] < losses[0] - 0.5
    assert after < before - 0.5, (before, after)


def test_same_seed_same_weights_other_seed_other_weights(tiny, rows):
    tokenizer, train, _ = rows
    small = WarmupData(train.input_ids[:8], train.labels[:8])
    states = []
    for seed in (0, 0, 1):
        model = load(tiny["model"])
        warm_up(model, small, pad_id=tokenizer.pad_token_id, steps=3, batch_size=2, seed=seed)
        states.append(model.state_dict())
    same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert same and not other


def test_skipping_every_row_is_an_error(tiny, rows):
    tokenizer = rows[0]
    with pytest.raises(ValueError, match="none left after skipping 32"):
        chosen_rows("pairs", tiny["data"], tokenizer, skip=32)
