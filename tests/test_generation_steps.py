"""Eval generations beyond the plain end-of-run case: at every evaluation (`eval_generate_every_eval`),
with a LoRA policy (reference = adapters off) and with KTO. Every answer in a run's table is re-derived
outside the run: the same prompts and seeds on weights loaded from disk (a checkpoint, the saved model or
adapter, the untouched starting model) must give the same text and token count. The reference must be
the starting weights: a wrong reference (the trained policy, adapters left on) changes those rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.config import load_config
from trainer.data import load_preference_data
from trainer.generation import GENERATIONS_NAME, eval_prompts, sample
from trainer.workflow import run_training

NEW_TOKENS = 6
PROMPTS = 2


def run(tiny_model: Path, data_dir: Path, out: Path, **overrides):
    raw = {
        "model_name_or_path": str(tiny_model), "stage": "dpo", "do_train": True, "finetuning_type": "full",
        "dataset": "pairs", "dataset_dir": str(data_dir), "template": "default", "cutoff_len": 96,
        "val_size": 4, "per_device_train_batch_size": 2, "max_steps": 2, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant", "output_dir": str(out), "save_strategy": "no", "report_to": "none",
        "use_ray": False, "disable_tqdm": True, "seed": 3, "eval_generate": PROMPTS,
        "eval_generate_max_new_tokens": NEW_TOKENS, **overrides,
    }
    cfg = load_config(raw)
    return cfg, run_training(cfg)


def table_of(out: Path) -> list[dict]:
    table = json.loads((out / GENERATIONS_NAME).read_text())["table"]
    return [dict(zip(table, values)) for values in zip(*table.values())]


def answers(model, cfg) -> list[tuple[str, int]]:
    """(text, tokens) of `model`'s answers to the run's eval prompts under the run's sampling settings."""
    from trainer.generation import SamplingSettings

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.model_name_or_path)
    data = load_preference_data(cfg.data, tokenizer, stage=cfg.finetuning.stage, seed=cfg.training["seed"])
    out = sample(model, eval_prompts(data.eval, PROMPTS), tokenizer, SamplingSettings(max_new_tokens=NEW_TOKENS))
    return [(tokenizer.decode(ids, skip_special_tokens=True), len(ids)) for ids in out]


def rows_of(rows: list[dict], side: str) -> list[tuple[str, int]]:
    return [(r[side], r[f"{side}_tokens"]) for r in rows]


def test_every_eval_generates_once_per_eval_step_from_that_steps_weights(tiny_model, data_dir, tmp_path):
    """max_steps 4, eval and save every 2 steps: generations at steps 2 and 4 (the end-of-run generation
    finds step 4 done); step 2's answers are checkpoint-2's, step 4's the saved
    model's; the reference rows are the starting model's at both steps; each step's mean length is its
    rows' mean."""
    out = tmp_path / "every"
    cfg, result = run(tiny_model, data_dir, out, max_steps=4, eval_strategy="steps", eval_steps=2,
                      save_strategy="steps", save_steps=2, eval_generate_every_eval=True)
    logged = [e for e in result.log_history if "eval_generate/mean_length" in e]
    assert [e["step"] for e in logged] == [2, 4]
    rows = table_of(out)
    assert [r["step"] for r in rows] == [2, 2, 4, 4]
    assert list(rows[0])[0] == "step"
    by_step = {s: [r for r in rows if r["step"] == s] for s in (2, 4)}
    for entry in logged:
        mine = by_step[entry["step"]]
        assert entry["eval_generate/mean_length"] == pytest.approx(sum(r["policy_tokens"] for r in mine) / PROMPTS)
    assert result.metrics["eval_generate/mean_length"] == logged[-1]["eval_generate/mean_length"]
    start = answers(AutoModelForCausalLM.from_pretrained(tiny_model), cfg)
    assert rows_of(by_step[2], "reference") == rows_of(by_step[4], "reference") == start
    assert rows_of(by_step[2], "policy") == answers(AutoModelForCausalLM.from_pretrained(out / "checkpoint-2"), cfg)
    assert rows_of(by_step[4], "policy") == answers(AutoModelForCausalLM.from_pretrained(out), cfg)
    assert by_step[4] != by_step[2]  # 4 steps at lr 5e-3 move a tiny model's samples


def test_lora_policy_answers_with_adapters_and_reference_without(tiny_model, data_dir, tmp_path):
    """LoRA: the policy rows are the base model plus the saved adapter; the reference rows (adapters off
    inside the run) are the bare base model's."""
    from peft import PeftModel

    out = tmp_path / "lora"
    cfg, _ = run(tiny_model, data_dir, out, finetuning_type="lora", lora_rank=4, learning_rate=5e-2)
    rows = table_of(out)
    assert "step" in rows[0] and {r["step"] for r in rows} == {2}
    assert rows_of(rows, "reference") == answers(AutoModelForCausalLM.from_pretrained(tiny_model), cfg)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert rows_of(rows, "policy") == answers(adapted, cfg)
    assert rows_of(rows, "policy") != rows_of(rows, "reference")  # the adapter is on for the policy


def test_kto_run_generates_policy_and_starting_reference(tiny_model, data_dir, tmp_path):
    out = tmp_path / "kto"
    cfg, result = run(tiny_model, data_dir, out, stage="kto", dataset="kto")
    rows = table_of(out)
    assert len(rows) == PROMPTS
    assert rows_of(rows, "reference") == answers(AutoModelForCausalLM.from_pretrained(tiny_model), cfg)
    assert rows_of(rows, "policy") == answers(AutoModelForCausalLM.from_pretrained(out), cfg)
    assert result.metrics["eval_generate/ref_mean_length"] == pytest.approx(
        sum(r["reference_tokens"] for r in rows) / PROMPTS)
