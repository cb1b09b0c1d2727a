"""The evaluation after training (`trainer.final_eval`): skipped when training evaluated the final weights at
its last step, and then its reported metrics must be exactly what a fresh evaluation of the saved model against
the same reference gives; run as before when the weights may differ (`load_best_model_at_end`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import TrainerCallback

from trainer.config import load_config
from trainer.final_eval import evaluated_at_last_step
from trainer.workflow import build_trainer, run_training

TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time")


class CountEvaluations(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def raw_config(tiny, out, **overrides) -> dict:
    return {
        "model_name_or_path": str(tiny["model"]), "stage": "dpo", "do_train": True, "finetuning_type": "full",
        "dataset": "pairs", "dataset_dir": str(tiny["data"]), "template": "default", "cutoff_len": 96,
        "val_size": 6, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant", "output_dir": str(out), "save_strategy": "no", "report_to": "none",
        "use_ray": False, "disable_tqdm": True, "seed": 5, "precompute_ref": "never", "eval_strategy": "steps",
        "eval_steps": 2, **overrides,
    }


def train(tiny, out, **overrides):
    counter = CountEvaluations()
    result = run_training(load_config(raw_config(tiny, out, **overrides)), callbacks=[counter])
    return result, counter.steps


@pytest.mark.parametrize("max_steps, schedule", [(4, [2, 4]), (3, [2, 3])])
def test_final_metrics_are_a_fresh_evaluation_of_the_saved_model(tiny, tmp_path, max_steps, schedule):
    """On the eval schedule (4 steps) and off it (3 steps: Hugging Face evaluates the last step anyway), the
    trainer evaluates once per scheduled step and not again after training. The reported metrics equal a new
    evaluation of the saved weights with the starting model as reference, key for key (timings aside), and
    are what `eval_results.json` holds."""
    out = tmp_path / "run"
    result, evaluated = train(tiny, out, max_steps=max_steps)
    assert evaluated == schedule
    final = {k: v for k, v in result.metrics.items() if k.startswith("eval_")}
    assert json.loads((out / "eval_results.json").read_text()) == {**final, "epoch": result.metrics["epoch"]}
    assert [e["step"] for e in result.log_history if "eval_loss" in e] == schedule

    fresh_cfg = load_config(raw_config(tiny, tmp_path / "fresh", model_name_or_path=str(out),
                                       ref_model=str(tiny["model"]), do_train=False, do_eval=True))
    fresh, _ = build_trainer(fresh_cfg)
    again = fresh.evaluate(metric_key_prefix="eval")
    compared = sorted(k for k in again if k.startswith("eval_") and k not in TIMINGS)
    assert compared == sorted(k for k in final if k not in TIMINGS)
    assert any(k.startswith("eval_rewards/") for k in compared)  # the reference is part of what is compared
    for key in compared:
        assert final[key] == pytest.approx(again[key], rel=1e-5, abs=1e-6), key
    first = next(e for e in result.log_history if "eval_loss" in e)
    assert first["eval_loss"] != pytest.approx(final["eval_loss"], abs=1e-6)  # training moved the weights


def test_best_model_at_end_is_evaluated_again(tiny, tmp_path):
    """`load_best_model_at_end` may put other weights in the model after the last step: those are evaluated."""
    result, evaluated = train(tiny, tmp_path / "best", max_steps=4, save_strategy="steps", save_steps=2,
                              load_best_model_at_end=True, metric_for_best_model="eval_loss")
    assert evaluated == [2, 4, 4]
    best = min((e for e in result.log_history if "eval_loss" in e and e["step"] in (2, 4)),
               key=lambda e: e["eval_loss"])
    final = [e for e in result.log_history if "eval_loss" in e][-1]
    assert final["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-5)


def test_evaluation_only_run_evaluates(tiny, tmp_path):
    result, evaluated = train(tiny, tmp_path / "eval_only", do_train=False, do_eval=True)
    assert evaluated == [0] and "eval_loss" in result.metrics


def state_of(history, global_step, *, do_train=True, best=False):
    return SimpleNamespace(args=SimpleNamespace(do_train=do_train, load_best_model_at_end=best),
                           state=SimpleNamespace(log_history=history, global_step=global_step))


def test_reuse_rule_reads_the_latest_evaluation():
    history = [
        {"loss": 0.7, "step": 2, "epoch": 0.5},
        {"eval_loss": 0.6, "eval_rewards/margins": 0.1, "epoch": 0.5, "step": 2},
        {"loss": 0.5, "step": 4, "epoch": 1.0},
        {"eval_loss": 0.4, "eval_rewards/margins": 0.3, "eval_runtime": 1.5, "epoch": 1.0, "step": 4},
        {"eval_generate/mean_length": 6.0, "step": 4, "epoch": 1.0},
        {"train_loss": 0.6, "train_runtime": 9.0, "step": 4, "epoch": 1.0},
    ]
    assert evaluated_at_last_step(state_of(history, 4)) == {
        "eval_loss": 0.4, "eval_rewards/margins": 0.3, "eval_runtime": 1.5, "epoch": 1.0}
    assert evaluated_at_last_step(state_of(history[:3], 4)) is None  # the last evaluation was at step 2
    assert evaluated_at_last_step(state_of(history, 5)) is None
    assert evaluated_at_last_step(state_of(history, 4, best=True)) is None
    assert evaluated_at_last_step(state_of(history, 4, do_train=False)) is None
    assert evaluated_at_last_step(state_of([], 0)) is None
