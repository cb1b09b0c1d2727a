"""Eval generations (`trainer.generation`) and the reward model that judges them (`trainer.reward_model`):
prompt extraction, seeded sampling, the win rate and Bradley-Terry loss by hand, a tiny reward model that
learns its training pairs, and the config checks."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.generation import SamplingSettings, as_table, mean_length, prompt_ids, sample, win_rate
from trainer.reward_model import (
    bradley_terry_loss,
    conversation_text,
    pair_accuracy,
    preference_pairs,
    train_bradley_terry,
)

# ------------------------------------------------------------------------------------------ by hand


def test_prompt_is_the_prefix_before_the_first_response_label():
    dpo = {"chosen_input_ids": [5, 6, 7, 8, 2], "chosen_labels": [-100, -100, 7, 8, 2]}
    kto = {"input_ids": [9, 3, 4], "labels": [-100, 3, 4]}
    assert prompt_ids(dpo) == [5, 6]
    assert prompt_ids(kto) == [9]
    with pytest.raises(ValueError, match="no response tokens"):
        prompt_ids({"input_ids": [1, 2], "labels": [-100, -100]})


def test_win_rate_follows_from_the_scores():
    """policy  1.0  2.0  3.0  0.5
       ref     0.0  2.0  4.0  0.0
       win     1    0.5  0    1     -> 2.5 / 4 = 0.625 (a tie counts half)"""
    assert win_rate([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.0]) == 0.625
    assert win_rate([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        win_rate([1.0], [1.0, 2.0])


def test_bradley_terry_loss_by_hand():
    """r_c - r_r = (1, 0): mean(-log s(1), -log s(0)) = (0.313262 + 0.693147) / 2 = 0.503204."""
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.503204, abs=1e-6)


def test_table_columns_and_mean_length():
    from trainer.generation import GenerationRow

    rows = [GenerationRow(0, "p0", "a", "b", 3, 5), GenerationRow(1, "p1", "c", "d", 1, 2)]
    assert mean_length(rows, "policy") == 2.0 and mean_length(rows, "reference") == 3.5
    table = as_table(rows)
    assert list(table) == ["index", "prompt", "policy", "reference", "policy_tokens", "reference_tokens"]
    rows[0].policy_reward, rows[0].reference_reward, rows[1].policy_reward, rows[1].reference_reward = 1, 0, 0, 1
    assert as_table(rows)["policy_reward"] == [1, 0]


# ------------------------------------------------------------------------------------- on the model


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny["model"]), AutoTokenizer.from_pretrained(tiny["model"])


def test_sampling_is_seeded_per_prompt(model_and_tokenizer):
    """Same seed: the same answers, and prompt i's answer does not depend on the prompts around it;
    another seed: other answers. The caller's RNG stream is left where it was."""
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer.encode(f"Human: question {i}\nAssistant:") for i in range(3)]
    settings = SamplingSettings(max_new_tokens=8, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = sample(model, prompts, tokenizer, settings)
    assert torch.equal(torch.rand(1), expected_next)
    assert sample(model, prompts, tokenizer, settings) == first
    assert sample(model, prompts[:2], tokenizer, settings) == first[:2]
    assert sample(model, prompts, tokenizer, SamplingSettings(max_new_tokens=8, seed=8)) != first
    assert all(len(a) <= 8 for a in first) and any(first)


@pytest.fixture(scope="module")
def reward_pairs(tiny, model_and_tokenizer):
    return preference_pairs("pairs", tiny["data"], model_and_tokenizer[1], cutoff_len=128)


def test_pairs_render_prompt_then_answer(reward_pairs, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    chosen, rejected = reward_pairs[0]
    assert chosen.startswith("Human: ") and rejected.startswith("Human: ")
    assert chosen != rejected
    # LLaMA-Factory's truncation may cut a long prompt before the template's suffix; where it is kept, the
    # answer follows it
    kept = [c for c, _ in reward_pairs if "\nAssistant:" in c]
    assert kept and all(c.split("\nAssistant:", 1)[1].strip() for c in kept)
    assert not chosen.endswith(tokenizer.eos_token)  # stop tokens are not scored
    assert conversation_text(tokenizer, [10, 11], [12, tokenizer.eos_token_id]) == tokenizer.decode([10, 11, 12])


def test_bradley_terry_ranks_its_training_pairs_above_chance(tiny, reward_pairs):
    """From random weights with a fresh scalar head: ~0.5 of the 32 pairs ranked right; 40 steps of
    Bradley-Terry must fit most of them (a sign error in the loss would drive this towards 0)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny["model"], num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    losses = train_bradley_terry(model, tokenizer, reward_pairs, steps=40, lr=2e-3, seed=0)
    accuracy = pair_accuracy(model, tokenizer, reward_pairs)
    assert accuracy >= 0.75, accuracy
    assert sum(losses[-8:]) / 8 < math.log(2) - 0.1


# ------------------------------------------------------------------------------------------- config


def config(tiny, **extra) -> dict:
    return {"model_name_or_path": str(tiny["model"]), "stage": "dpo", "finetuning_type": "full",
            "dataset": "pairs", "dataset_dir": str(tiny["data"]), "template": "default", "val_size": 4,
            "output_dir": "/tmp/prefsweep-unused", **extra}


def test_config_checks(tiny):
    assert load_config(config(tiny, eval_generate=2, eval_reward_model="rm")).finetuning.eval_generate == 2
    assert load_config(config(tiny, eval_generate=0, eval_reward_model="rm")).finetuning.eval_generate == 0
    with pytest.raises(ConfigError, match="no eval_dataset and val_size is 0"):
        load_config(config(tiny, eval_generate=2, val_size=0))
    with pytest.raises(ConfigError, match="eval_generate must be >= 0"):
        load_config(config(tiny, eval_generate=-1))
