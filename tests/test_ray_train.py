"""Ray Train on a real local Ray (127.0.0.1, token auth), CPU workers over gloo.

Two workers with a per-device batch of 2 see, step for step, the same 4 examples as one process with
a batch of 4 (Accelerate shards each global batch across ranks from the same seeded permutation),
and DDP averages the two ranks' gradients, so both runs follow the same trajectory. The reward
metrics are gathered over both ranks before averaging, so `rewards/accuracies` equals the
single-process value over all 4 pairs (a per-rank mean would be off whenever the ranks disagree).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayjobs import train

REPO = Path(__file__).resolve().parents[1]
TRAIN_METRICS = {"loss", "grad_norm", "learning_rate", "epoch", "rewards/chosen", "rewards/rejected",
                 "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                 "logits/chosen", "logits/rejected"}

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def config(tiny: dict, out: Path, **overrides) -> dict:
    raw = {
        "model_name_or_path": str(tiny["model"]),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "pref_loss": "sigmoid",
        "pref_beta": 0.1,
        "dataset": "pairs",
        "dataset_dir": str(tiny["data"]),
        "template": "default",
        "cutoff_len": 96,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 11,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    raw.update(overrides)
    return raw


def train_logs(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def in_process(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "in_process"
    train.run(config(tiny, out, use_ray=False), track=False)
    return out


@pytest.fixture(scope="module")
def two_workers(local_ray, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "two_workers"
    train.run(config(tiny, out, per_device_train_batch_size=2, **{"ray": {"num_workers": 2}}), track=False)
    return out


def test_two_ray_workers_match_one_process(in_process, two_workers):
    one_logs, two_logs = train_logs(in_process), train_logs(two_workers)
    assert [e["step"] for e in two_logs] == [e["step"] for e in one_logs] == [1, 2, 3, 4]
    assert one_logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    for one, two in zip(one_logs, two_logs):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4), one["step"]
        assert two["rewards/margins"] == pytest.approx(one["rewards/margins"], abs=1e-4)
        # gathered over both ranks' pairs: the same value as one process over all 4 pairs
        assert two["rewards/accuracies"] == pytest.approx(one["rewards/accuracies"], abs=1e-6)
    assert two_logs[-1]["loss"] < two_logs[0]["loss"]


def test_ray_and_in_process_write_the_same_output_dir(in_process, two_workers):
    """Rank 0 writes the config's output_dir itself (absolute, on this node), with the same files."""
    assert {p.name for p in two_workers.iterdir()} == {p.name for p in in_process.iterdir()}
    assert {"trainer_state.json", "all_results.json", "resolved_config.yaml"} <= {p.name for p in two_workers.iterdir()}


def test_deepspeed_zero2_two_ray_workers(local_ray, tiny, tmp_path, two_workers):
    """ZeRO-2 (configs/ds_z2.json, "auto" values) on 2 CPU workers: same metrics, same trajectory as DDP."""
    out = tmp_path / "zero2"
    train.run(
        config(tiny, out, per_device_train_batch_size=2, deepspeed=str(REPO / "configs" / "ds_z2.json"),
               **{"ray": {"num_workers": 2}}),
        track=False,
    )
    logs, ddp_logs = train_logs(out), train_logs(two_workers)
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    for entry in logs:
        assert TRAIN_METRICS <= set(entry), TRAIN_METRICS - set(entry)
    assert {k for e in logs for k in e} == {k for e in ddp_logs for k in e}
    for ds, ddp in zip(logs, ddp_logs):
        assert ds["loss"] == pytest.approx(ddp["loss"], abs=1e-4)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_deepspeed_zero3_lora_two_ray_workers(local_ray, tiny, tmp_path):
    """ZeRO-3 partitions the weights while the model loads (deepspeed.zero.Init), which needs DeepSpeed's
    comm layer on Ray's process group first. LoRA: the reference is the policy with adapters off."""
    out = tmp_path / "zero3"
    train.run(
        config(tiny, out, per_device_train_batch_size=2, finetuning_type="lora",
               deepspeed=str(REPO / "configs" / "ds_z3.json"), **{"ray": {"num_workers": 2}}),
        track=False,
    )
    logs = train_logs(out)
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # LoRA B = 0: policy == reference
    assert TRAIN_METRICS <= set(logs[-1])
    assert (out / "adapter_model.safetensors").is_file()


def test_deepspeed_zero3_full_two_ray_workers(local_ray, tiny, tmp_path):
    """ZeRO-3 full fine-tuning: the frozen reference is loaded again (a copy of a partitioned policy
    would hold empty shards) and wrapped by DeepSpeed, so policy == reference at step 1: loss log 2."""
    out = tmp_path / "zero3_full"
    train.run(
        config(tiny, out, per_device_train_batch_size=2, finetuning_type="full",
               deepspeed=str(REPO / "configs" / "ds_z3.json"), **{"ray": {"num_workers": 2}}),
        track=False,
    )
    logs = train_logs(out)
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert logs[-1]["rewards/margins"] != pytest.approx(0.0, abs=1e-6)  # the policy moved away from it
