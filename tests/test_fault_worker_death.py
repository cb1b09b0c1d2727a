"""Worker death: one Ray Train worker is SIGKILLed mid-run, after a checkpoint; `ray.max_failures: 1`
restarts the worker group, which resumes from the last complete checkpoint Ray holds.

Two CPU workers (gloo, per-device batch 2) run 6 steps with `save_steps: 3`; rank 1 kills its own
process at the end of step 5 on the first attempt (`tests/fault_injection.py`, installed through `TrainLoop.callbacks`; a marker
file tells the attempts apart). The restarted group resumes from checkpoint-3: steps 4 and 5 run
again (<= save_steps), and the optimizer (Adam moments), linear LR schedule, RNG and data position
are restored: every step's loss and learning rate equal an uninterrupted run with the same seed (one
process with the same global batch of 4, which follows the 2-worker trajectory, see test_ray_train),
the final loss within 1e-4. HF's Trainer loads optimizer, scheduler and RNG with
`torch.load(weights_only=True)` (numpy allow-listed for the RNG file): no unpickling anywhere.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayjobs import train
from tests.fault_injection import FaultInjectionCallback
from tests.test_fault_driver_death import one_value_per_step
from trainer.checkpoints import CHECKPOINT_COMPLETE

REPO = Path(__file__).resolve().parents[1]
SAVE_STEPS = 3
KILL_STEP = 5
MAX_STEPS = 6

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def config(tiny: dict, out: Path, **overrides) -> dict:
    raw = {
        "model_name_or_path": str(tiny["model"]), "stage": "dpo", "do_train": True, "finetuning_type": "full",
        "pref_loss": "sigmoid", "pref_beta": 0.1, "dataset": "pairs", "dataset_dir": str(tiny["data"]),
        "template": "default", "cutoff_len": 96, "output_dir": str(out), "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "lr_scheduler_type": "linear", "warmup_steps": 2, "max_steps": MAX_STEPS,
        "logging_steps": 1, "save_strategy": "steps", "save_steps": SAVE_STEPS, "report_to": "none",
        "seed": 11, "use_cpu": True, "disable_tqdm": True,
    }
    raw.update(overrides)
    return raw


def train_logs(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory) -> Path:
    """The reference: same seed and global batch, in this process, never interrupted."""
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    train.run(config(tiny, out, use_ray=False), track=False)
    return out


def run_killed(tiny, tmp_path: Path, tracking: dict | None = None, callbacks=(),
               **overrides) -> tuple[Path, list[int], object]:
    """2 Ray workers, `max_failures: 1`; rank 1 SIGKILLs itself after step KILL_STEP, first attempt only.
    `tracking`: the MLflow callback's arguments (`make_torch_trainer`), or None; `callbacks`: more
    per-worker callback factories (called with the rank)."""
    out, faults = tmp_path / "killed", tmp_path / "faults"
    faults.mkdir()
    marker, events = faults / "killed.pid", faults / "steps.txt"
    cfg = train.prepare_config(
        config(tiny, out, per_device_train_batch_size=2, **overrides,
               ray={"num_workers": 2, "max_failures": 1, "storage_path": str(tmp_path / "ray_results")})
    )
    trainer = train.make_torch_trainer(cfg, name="worker-death", tracking=tracking)
    trainer.train_loop_config["loop"].callbacks += list(callbacks)
    trainer.train_loop_config["loop"].callbacks.append(
        functools.partial(FaultInjectionCallback, kill_step=KILL_STEP, kill_rank=1, marker=str(marker),
                          events=str(events)))
    result = trainer.fit()
    assert marker.is_file(), "rank 1 was never killed"
    steps = [int(line) for line in events.read_text().split()]  # rank 0's finished steps, both attempts
    return out, steps, result


def check_resumed(out: Path, steps: list[int], result, reference: Path, label: str) -> None:
    second = steps[steps.index(KILL_STEP) + 1:]
    assert second and second[0] == SAVE_STEPS + 1, steps  # the restarted group resumed after checkpoint-3
    rerun = len(steps) - len(set(steps))
    print(f"\n{label}: steps seen by rank 0 across attempts {steps}; re-run {rerun} (save_steps {SAVE_STEPS})")
    assert 1 <= rerun <= SAVE_STEPS
    assert sorted(set(steps)) == list(range(1, MAX_STEPS + 1))
    assert result.checkpoint is not None and Path(result.checkpoint.path, CHECKPOINT_COMPLETE).is_file()
    # every rank's RNG state is in the checkpoint the restart loaded (HF restores it per rank)
    assert {"rng_state_0.pth", "rng_state_1.pth", "scheduler.pt"} <= {
        p.name for p in (out / f"checkpoint-{SAVE_STEPS}").iterdir()}

    killed, uninterrupted = train_logs(out), train_logs(reference)
    assert [e["step"] for e in killed] == [e["step"] for e in uninterrupted] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(killed, uninterrupted):
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-9), a["step"]  # scheduler
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), a["step"]  # optimizer, data position
    diff = abs(killed[-1]["loss"] - uninterrupted[-1]["loss"])
    print(f"{label}: final loss killed+resumed {killed[-1]['loss']:.6f}, uninterrupted "
          f"{uninterrupted[-1]['loss']:.6f}, |diff| {diff:.2e}")
    assert diff <= 1e-4
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    assert (out / f"checkpoint-{MAX_STEPS}" / CHECKPOINT_COMPLETE).is_file()


def test_worker_killed_after_checkpoint_resumes_and_matches_uninterrupted(local_ray, tiny, uninterrupted, tmp_path):
    """Also tracked in MLflow: the restarted group re-runs steps 4-5 (step 4 was logged before the kill), and
    the run's history still holds one value per metric and step, each the uninterrupted run's."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"tracking_uri": store, "experiment_id": None, "experiment_name": "worker-death",
                "run_name": "worker-death"}
    out, steps, result = run_killed(tiny, tmp_path, tracking=tracking)
    assert (out / f"checkpoint-{SAVE_STEPS}" / "optimizer.pt").is_file()
    check_resumed(out, steps, result, uninterrupted, "DDP")

    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("worker-death").experiment_id])
    history = one_value_per_step(client, run)
    assert history["loss"] == history["learning_rate"] == list(range(1, MAX_STEPS + 1))
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert [logged[e["step"]] for e in train_logs(uninterrupted)] == pytest.approx(
        [e["loss"] for e in train_logs(uninterrupted)], abs=1e-4)


def test_deepspeed_zero2_worker_killed_resumes_weights_only(local_ray, tiny, uninterrupted, tmp_path):
    """ZeRO-2: DeepSpeed's own checkpoint engine turns `weights_only` off; PreferenceTrainer swaps in
    a `weights_only=True` load with DeepSpeed's classes allow-listed, and the resume still matches."""
    import torch

    from trainer.checkpoints import deepspeed_safe_globals

    out, steps, result = run_killed(tiny, tmp_path, deepspeed=str(REPO / "configs" / "ds_z2.json"))
    check_resumed(out, steps, result, uninterrupted, "ZeRO-2")
    shards = sorted((out / f"checkpoint-{SAVE_STEPS}").glob("global_step*/*.pt"))
    assert any("optim_states" in p.name for p in shards), shards
    for shard in shards:  # the allow-list is all these files need; without it they are refused
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            torch.load(shard, map_location="cpu", weights_only=True)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(next(p for p in shards if "optim_states" in p.name), map_location="cpu", weights_only=True)
