"""Trials whose worker groups fit the cluster run at the same time: the trial driver holds no CPU.

With a fractional CPU per trial driver (0.001), two trials of one 1-CPU worker each need 2.002 CPUs, so
on a 2-CPU machine the second trial's Ray Train worker waited for the first trial to finish and a sweep
ran its trainings one after another. This runs two Tune trials, each a real `TorchTrainer` with one
1-CPU worker, under `TRIAL_DRIVER_RESOURCES` on a private 2-CPU Ray, and checks that the two workers'
training functions ran at the same time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rayjobs.sweep import TRIAL_DRIVER_RESOURCES

HOLD_SECONDS = 6.0


def _worker_fn(config: dict) -> None:
    start = time.time()
    time.sleep(HOLD_SECONDS)
    Path(config["record"]).write_text(json.dumps([start, time.time()]))


def _trial(config: dict) -> None:
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    record = Path(config["storage"], f"trial-{config['i']}.json")
    TorchTrainer(
        _worker_fn,
        train_loop_config={"record": str(record)},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"trial-{config['i']}", storage_path=config["storage"]),
    ).fit()
    start, end = json.loads(record.read_text())
    tune.report({"start": start, "end": end})


@pytest.mark.timeout(300)
def test_two_one_cpu_trials_train_at_once_on_two_cpus(local_ray, tmp_path):
    from ray import tune

    assert local_ray.cluster_resources()["CPU"] == 2
    assert TRIAL_DRIVER_RESOURCES.get("CPU", 0) == 0
    (tmp_path / "train").mkdir()
    tuner = tune.Tuner(
        tune.with_resources(_trial, TRIAL_DRIVER_RESOURCES),
        param_space={"i": tune.grid_search([0, 1]), "storage": str(tmp_path / "train")},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(name="concurrency", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    (a_start, a_end), (b_start, b_end) = sorted((r.metrics["start"], r.metrics["end"]) for r in grid)
    overlap = min(a_end, b_end) - max(a_start, b_start)
    # run one after the other, the second would start after the first ended: overlap <= 0
    assert overlap > HOLD_SECONDS / 2, f"trainings overlapped {overlap:.1f} s of {HOLD_SECONDS} s"
