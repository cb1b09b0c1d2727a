"""A sweep on the local Ray it starts itself (`prefsweep sweep` without RAY_ADDRESS, as `make demo` runs it): each
trial's Ray Train controller runs in the trial's actor (`rayjobs.torch_trainer`, `local_trial`), and a trial that
ASHA stops is aborted through that controller (`TrialSlot.abort_here`), so the actor runs the next trial.

The same ASHA case as `tests/test_ray_sweep.py` (`asha_spec`; there on a running cluster, with Ray's controller
actors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_fault_driver_death import driver_env  # noqa: F401
from tests.test_ray_sweep import REPO, asha_spec, check_asha_stops

NAME = "localasha"


def phase_marks(path: Path) -> list[tuple[str, int]]:
    return [(name, int(pid)) for name, _, pid in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trials_on_the_sweeps_own_ray_run_their_controller_in_the_trial_actor_and_asha_aborts_it(
        driver_env, tiny_model, tmp_path):  # noqa: F811
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_path = tmp_path / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(asha_spec(NAME, tiny_model, tmp_path), sort_keys=False))
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
    trial_pids = check_asha_stops(NAME, tmp_path, store)

    marks = phase_marks(phases)
    # the three Train runs' controllers ran in the one trial actor: no controller process of their own
    assert [pid for name, pid in marks if name == "train_controller_here"] == [*trial_pids] * 3, marks
    # each trial's worker trains on its 1 CPU (the trial actor's OMP_NUM_THREADS is Ray's, not the user's)
    workers = {pid for name, pid in marks if name == "worker_start"}
    assert len(workers) == 3 and not workers & trial_pids, marks
    assert sorted(name for name, pid in marks if name.startswith("worker_torch_threads=")) == [
        "worker_torch_threads=1"] * 3, marks
    # ... each in a process forked by the sweep's fork server (rayjobs.warm_fork), which had imported the training
    # stack once for all of them; a process neither the driver's nor a trial's
    assert {pid for name, pid in marks if name == "warm_fork_child"} == workers, marks
    servers = {pid for name, pid in marks if name == "warm_fork_ready"}
    assert len(servers) == 1 and not servers & (workers | trial_pids), marks
