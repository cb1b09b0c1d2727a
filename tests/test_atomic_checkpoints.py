"""Outputs never half-written: a checkpoint counts only once complete, and the run's own files are
written through a temp file and a rename.

`PreferenceTrainer._save_checkpoint` writes `checkpoint-N/.complete` last (rank 0, atomically, after a
barrier once every rank wrote its files). A run killed while writing checkpoint-4 leaves it without
the marker: `resolve_resume` (`resume_from_checkpoint: true`) skips it and resumes from checkpoint-2,
and the resumed run ends where the uninterrupted one did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rayjobs import train
from trainer import workflow
from trainer.checkpoints import CHECKPOINT_COMPLETE, last_complete_checkpoint
from trainer.config import load_config, resolve_resume
from trainer.errors import ConfigError

pytestmark = pytest.mark.slow


def config(tiny: dict, out: Path, **overrides) -> dict:
    raw = {
        "model_name_or_path": str(tiny["model"]), "stage": "dpo", "do_train": True, "finetuning_type": "full",
        "pref_loss": "sigmoid", "pref_beta": 0.1, "dataset": "pairs", "dataset_dir": str(tiny["data"]),
        "template": "default", "cutoff_len": 96, "output_dir": str(out), "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "lr_scheduler_type": "linear", "max_steps": 4, "logging_steps": 1,
        "save_strategy": "steps", "save_steps": 2, "report_to": "none", "seed": 11, "use_cpu": True,
        "disable_tqdm": True, "use_ray": False,
    }
    raw.update(overrides)
    return raw


def train_logs(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def test_partial_checkpoint_is_skipped_and_resume_uses_the_previous_good_one(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    written: list[str] = []
    real = workflow.write_atomic
    monkeypatch.setattr(workflow, "write_atomic", lambda path, text: (written.append(Path(path).name), real(path, text)))
    train.run(config(tiny, out), track=False)
    full = train_logs(out)
    assert [e["step"] for e in full] == [1, 2, 3, 4]
    for step in (2, 4):
        assert (out / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).read_text().strip() == str(step)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")
    # the resolved config and every file run_training writes itself go through write_atomic
    assert {"resolved_config.yaml", "ref_cache.json", "train_results.json", "all_results.json",
            "trainer_state.json"} <= set(written)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    # a run killed while writing checkpoint-4: no marker, truncated weights and optimizer
    last = out / "checkpoint-4"
    (last / CHECKPOINT_COMPLETE).unlink()
    for name in ("model.safetensors", "optimizer.pt"):
        (last / name).write_bytes((last / name).read_bytes()[:100])
    (last / "scheduler.pt").unlink()
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2")

    resumed_raw = config(tiny, out, resume_from_checkpoint=True)
    assert resolve_resume(load_config(resumed_raw)) == str(out / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"incomplete \(no \.complete marker"):
        resolve_resume(load_config(config(tiny, out, resume_from_checkpoint=str(last))))

    train.run(resumed_raw, track=False)
    resumed = train_logs(out)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]  # steps 1-2 from checkpoint-2's state, 3-4 re-run
    for a, b in zip(resumed, full):
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), a["step"]
    assert (last / CHECKPOINT_COMPLETE).is_file()  # rewritten whole by the resumed run


def test_resuming_from_the_last_steps_checkpoint_trains_nothing_more(tiny, tmp_path):
    """Hugging Face's loop checks max_steps only after a step: resumed from checkpoint-4 of a 4-step run it trained
    step 5 (a sweep interrupted after its trial's last checkpoint did). The resumed run ends with checkpoint-4's
    weights and log."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    train.run(config(tiny, out), track=False)
    full = train_logs(out)
    metrics = train.run(config(tiny, out, resume_from_checkpoint=True), track=False)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert train_logs(out) == full  # steps 1-4 as trained, no step 5
    final, saved = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert final.keys() == saved.keys() and all((final[k] == saved[k]).all() for k in final)
    assert metrics["epoch"] == json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["epoch"]


def test_no_complete_checkpoint_is_a_config_error(tiny, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)  # cut off before its marker
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"partial")
    assert last_complete_checkpoint(out) is None
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        resolve_resume(load_config(config(tiny, out, resume_from_checkpoint=True)))


def test_write_atomic_killed_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "resolved_config.yaml"
    workflow.write_atomic(target, "good: 1\n")

    def crash(fd):
        raise KeyboardInterrupt  # killed after the new text went to the temp file, before the rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        workflow.write_atomic(target, "half: ")
    assert target.read_text() == "good: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["resolved_config.yaml"]
