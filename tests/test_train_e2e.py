"""End to end on the tiny offline model: every loss trains in-process and logs what docs/architecture.md names.

For each loss the first logged loss (policy == reference at step 1) is the known initial value, and
after a few epochs on a small repeated set the loss falls and rewards/accuracies rises.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from trainer.config import load_config
from trainer.workflow import run_training

BETA = 0.1
PAIRED_METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
]
INITIAL_LOSS = {  # policy == reference, from docs/architecture.md ("Losses: notation")
    "sigmoid": math.log(2),
    "hinge": 1.0,
    "ipo": (1 / (2 * BETA)) ** 2,
    "kto_pair": 0.5,
    "kto": 0.5,
}

pytestmark = pytest.mark.slow


def train(tiny_model: Path, data_dir: Path, out: Path, **overrides):
    raw = {
        "model_name_or_path": str(tiny_model),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "pairs",
        "dataset_dir": str(data_dir),
        "template": "default",
        "cutoff_len": 96,
        "pref_beta": BETA,
        "output_dir": str(out),
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "num_train_epochs": 12,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "plot_loss": True,
        "seed": 7,
        "use_ray": False,
        "disable_tqdm": True,
    }
    raw.update(overrides)
    cfg = load_config(raw)
    return run_training(cfg)


def train_logs(result) -> list[dict]:
    return [entry for entry in result.log_history if "loss" in entry]


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"])  # the rest: test_losses_e2e
def test_every_paired_loss_trains(tiny_model, data_dir, tmp_path, loss):
    overrides = {"pref_loss": loss}
    if loss in ("orpo", "simpo"):
        overrides["pref_beta"] = 2.0  # their beta scales averaged log-probs
    result = train(tiny_model, data_dir, tmp_path / loss, **overrides)
    logs = train_logs(result)
    assert len(logs) == 12
    first, last = logs[0], logs[-1]
    if loss in INITIAL_LOSS:
        assert first["loss"] == pytest.approx(INITIAL_LOSS[loss], abs=1e-4)
        assert first["rewards/accuracies"] == 0.0  # ties: chosen reward == rejected reward == 0
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for name in PAIRED_METRICS + (["sft_loss", "odds_ratio_loss"] if loss == "orpo" else []):
        assert name in first and math.isfinite(first[name]), name
    assert last["loss"] < first["loss"]
    assert last["rewards/accuracies"] > first["rewards/accuracies"]
    assert last["rewards/accuracies"] >= 0.75
    out = tmp_path / loss
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["log_history"][0]["loss"] == pytest.approx(first["loss"])
    assert json.loads((out / "all_results.json").read_text())["train_loss"] == pytest.approx(
        sum(e["loss"] for e in logs) / len(logs), rel=1e-3
    )
    assert load_config(out / "resolved_config.yaml").finetuning.pref_loss == loss
    for png in ("training_loss.png", "training_rewards_accuracies.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_orpo_logs_its_terms_consistently(tiny_model, data_dir, tmp_path):
    """orpo loss = sft_loss + beta * odds_ratio_loss, per logged step."""
    result = train(tiny_model, data_dir, tmp_path / "orpo", pref_loss="orpo", pref_beta=0.5, num_train_epochs=2)
    for entry in train_logs(result):
        assert entry["loss"] == pytest.approx(entry["sft_loss"] + 0.5 * entry["odds_ratio_loss"], rel=1e-4)


def test_kto_trains(tiny_model, data_dir, tmp_path):
    result = train(tiny_model, data_dir, tmp_path / "kto", stage="kto", dataset="kto",
                   per_device_train_batch_size=16)
    logs = train_logs(result)
    first, last = logs[0], logs[-1]
    assert first["loss"] == pytest.approx(INITIAL_LOSS["kto"], abs=1e-4)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    for name in PAIRED_METRICS[:2] + ["rewards/accuracies", "logps/chosen", "logps/rejected", "kl"]:
        assert name in first
    assert last["loss"] < first["loss"]
    assert last["rewards/accuracies"] > first["rewards/accuracies"]


def test_lora_reference_is_policy_without_adapters(tiny_model, data_dir, tmp_path):
    """LoRA starts with B = 0, so adapters-off reference == policy: the first sigmoid loss is log 2."""
    result = train(tiny_model, data_dir, tmp_path / "lora", finetuning_type="lora", lora_rank=4,
                   num_train_epochs=3, learning_rate=1e-2)
    logs = train_logs(result)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_label_smoothing_keeps_initial_loss_and_changes_the_curve(tiny_model, data_dir, tmp_path):
    plain = train_logs(train(tiny_model, data_dir, tmp_path / "a", num_train_epochs=3))
    smooth = train_logs(train(tiny_model, data_dir, tmp_path / "b", num_train_epochs=3, dpo_label_smoothing=0.2))
    assert smooth[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert smooth[-1]["loss"] != pytest.approx(plain[-1]["loss"], abs=1e-6)


def test_eval_metrics_are_prefixed_and_plotted(tiny_model, data_dir, tmp_path):
    result = train(tiny_model, data_dir, tmp_path / "eval", val_size=0.25, per_device_train_batch_size=2,
                   per_device_eval_batch_size=2, eval_strategy="steps", eval_steps=3, num_train_epochs=2,
                   do_eval=True)
    evals = [e for e in result.log_history if "eval_loss" in e]
    assert evals, "no evaluation logged"
    for name in PAIRED_METRICS:
        assert "eval_" + name in evals[0]
    assert (tmp_path / "eval" / "training_eval_loss.png").is_file()
    assert "eval_rewards/accuracies" in json.loads((tmp_path / "eval" / "all_results.json").read_text())


def test_eval_only_reference_is_the_model_and_rewards_are_dropped(tiny_model, data_dir, tmp_path):
    """do_train false, full weights, no ref_model: the reference is the model itself (as in LLaMA-Factory),
    so the loss is exactly log 2 and reward metrics, all 0 by construction, are not reported."""
    result = train(tiny_model, data_dir, tmp_path / "evalonly", do_train=False, do_eval=True,
                   eval_dataset="pairs", per_device_eval_batch_size=4)
    assert result.metrics["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.metrics["eval_logps/chosen"] < 0
    assert not [key for key in result.metrics if "rewards/" in key]
