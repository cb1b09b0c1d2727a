"""A sweep on the local Ray it starts itself (`prefsweep sweep` without RAY_ADDRESS, as `make demo` runs it): each
trial's Ray Train controller runs in the trial's actor (`rayjobs.torch_trainer`, `local_trial`), and a trial that
ASHA stops is aborted through that controller (`TrialSlot.abort_here`), so the actor runs the next trial.

The same ASHA case as `tests/test_ray_sweep.py` (there on a running cluster, with Ray's controller actors):
SimPO's loss starts near 0.97 and sigmoid's at 0.693, so each SimPO trial reaches its first rung behind the
median and is stopped mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.test_fault_driver_death import driver_env  # noqa: F401
from tests.test_ray_sweep import REPO, base_config

NAME = "localasha"


def phase_marks(path: Path) -> list[tuple[str, int]]:
    return [(name, int(pid)) for name, _, pid in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trials_on_the_sweeps_own_ray_run_their_controller_in_the_trial_actor_and_asha_aborts_it(
        driver_env, tiny_model, tmp_path):  # noqa: F811
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = {
        "name": NAME,
        "base": base_config(tiny_model, tmp_path / "outputs", max_steps=9, eval_strategy="no", val_size=0,
                            plot_loss=False),
        "space": {
            "pref_loss": {"grid": ["sigmoid", "simpo"]},
            "pref_beta": {"by": "pref_loss", "values": {"sigmoid": 0.1, "simpo": {"grid": [2.0, 2.5]}}},
            "simpo_gamma": {"by": "pref_loss", "values": {"simpo": 0.5}},
        },
        "metric": "loss",
        "mode": "min",
        "reference_cache": False,
        "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
        "trial_resources": {"num_workers": 1},
        "max_concurrent_trials": 1,
        "storage_path": str(tmp_path / "ray_results"),
    }
    spec_path = tmp_path / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    phases = tmp_path / "phases.txt"
    env = {k: v for k, v in driver_env.items() if k != "OMP_NUM_THREADS"}
    env.update(MLFLOW_TRACKING_URI=store, MLFLOW_EXPERIMENT_NAME=NAME, PREFSWEEP_PHASES=str(phases))
    driver = subprocess.Popen([sys.executable, "-m", "rayjobs.sweep", str(spec_path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = driver.communicate(timeout=480)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    assert driver.returncode == 0, output[-6000:]
    assert "on a local Ray" in output, output[-3000:]

    last_steps, trial_pids = {}, set()
    for result_file in (tmp_path / "ray_results" / NAME).glob("trial_*/result.json"):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        last_steps[result_file.parent.name] = max(r["step"] for r in results)
        trial_pids |= {r["pid"] for r in results}
    stopped = ["trial_001_simpo_beta2_gamma0.5", "trial_002_simpo_beta2.5_gamma0.5"]
    assert sorted(last_steps) == ["trial_000_sigmoid_beta0.1", *stopped], last_steps
    assert last_steps["trial_000_sigmoid_beta0.1"] == 9, last_steps
    assert all(last_steps[name] < 9 for name in stopped), f"not stopped early: {last_steps}"
    assert len(trial_pids) == 1, trial_pids  # one trial actor ran every trial

    marks = phase_marks(phases)
    # the three Train runs' controllers ran in that trial actor: no controller process of their own
    assert [pid for name, pid in marks if name == "train_controller_here"] == [*trial_pids] * 3, marks
    # each trial's worker trains on its 1 CPU (the trial actor's OMP_NUM_THREADS is Ray's, not the user's)
    workers = {pid for name, pid in marks if name == "worker_start"}
    assert len(workers) == 3 and not workers & trial_pids, marks
    assert sorted(name for name, pid in marks if name.startswith("worker_torch_threads=")) == [
        "worker_torch_threads=1"] * 3, marks

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(NAME)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in r.data.tags}
    assert {n: r.info.status for n, r in runs.items()} == {
        "trial_000_sigmoid_beta0.1": "FINISHED", stopped[0]: "KILLED", stopped[1]: "KILLED"}
    for name in stopped:  # aborted a few steps past its stop, not trained to the end
        steps = [m.step for m in client.get_metric_history(runs[name].info.run_id, "loss")]
        assert last_steps[name] <= max(steps) < 9, (name, steps)
