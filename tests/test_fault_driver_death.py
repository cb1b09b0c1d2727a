"""Driver death: the sweep driver is SIGKILLed halfway and `python -m rayjobs.sweep SPEC --resume` finishes it.

The driver starts its own local Ray (token auth, loopback) and runs 4 trials, 2 at a time, in its own process group; once Tune's experiment state
says 2 trials are TERMINATED and a running trial's Ray Train run holds a checkpoint, the whole process
group gets SIGKILL (the driver and its Ray die together). `--resume` must then finish the other 2 trials (the checkpointed one from its
checkpoint), leave the 2 finished ones alone, and leave one MLflow child run per trial under the one
parent run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.fault_injection import kill_driver_when
from tests.test_ray_sweep import BIN, REPO, base_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NAME = "diedriver"
SAVE_STEPS = 3
MAX_STEPS = 8


@pytest.fixture(scope="module")
def driver_env(tmp_path_factory):
    """A driver that starts its own local Ray (no RAY_ADDRESS), with token auth and a token of its own:
    killing the driver's process group takes its Ray (GCS, raylet, and so the workers) down with it."""
    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    return env


def tune_trials(exp: Path) -> dict[str, dict]:
    """Trial name -> {id, status} from Tune's latest saved experiment state."""
    states = sorted(exp.glob("experiment_state-*.json"))  # named by start time; a restore touches old ones
    if not states:
        return {}
    try:
        state = json.loads(states[-1].read_text())
    except ValueError:  # caught mid-write
        return {}
    trials = {}
    for trial_json, _ in state["trial_data"]:
        trial = json.loads(trial_json)
        trials[trial["custom_trial_name"]] = {"id": trial["trial_id"], "status": trial["status"]}
    return trials


def has_checkpoint(exp: Path, trial: str) -> bool:
    snapshot = exp / trial / "train" / "checkpoint_manager_snapshot.json"
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):
        return False


def mlflow_runs(store: str, name: str = NAME) -> tuple[list, list]:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return [], []
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def one_value_per_step(client: MlflowClient, run) -> dict[str, list[int]]:
    """Every metric of `run` -> its steps, asserting none holds two values at one step."""
    steps = {}
    for key in run.data.metrics:
        steps[key] = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert len(steps[key]) == len(set(steps[key])), (run.info.run_name, key, steps[key])
    return steps


def test_sweep_resumes_after_the_driver_is_killed(driver_env, tiny_model, tmp_path):
    started = time.monotonic()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray_results"
    exp = storage / NAME
    spec = {
        "name": NAME,
        "base": base_config(tiny_model, tmp_path / "outputs", max_steps=MAX_STEPS, eval_strategy="no", val_size=0,
                            plot_loss=False, save_strategy="steps", save_steps=SAVE_STEPS),
        "space": {"pref_loss": {"grid": ["sigmoid", "ipo", "hinge", "simpo"]}},
        "metric": "loss",
        "mode": "min",
        "reference_cache": False,
        "max_concurrent_trials": 2,
        "trial_resources": {"num_workers": 1},
        "storage_path": str(storage),
    }
    spec_path = tmp_path / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**driver_env, "MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": NAME}
    command = [sys.executable, "-m", "rayjobs.sweep", str(spec_path)]

    # --resume with nothing to resume: a clear error naming the path
    nothing = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2, nothing.stdout + nothing.stderr
    assert f"no sweep state to resume at {exp}" in nothing.stderr

    # 1. the first driver, killed (its whole process group) halfway
    def halfway() -> bool:
        trials = tune_trials(exp)
        done = [n for n, t in trials.items() if t["status"] == "TERMINATED"]
        running = [n for n, t in trials.items() if t["status"] != "TERMINATED"]
        return len(done) == 2 and any(has_checkpoint(exp, n) for n in running)

    kill_driver_when(command, cwd=REPO, env=env, log_path=tmp_path / "first.log", ready=halfway, timeout_s=240)
    killed_at_ms = int(time.time() * 1000)
    before = tune_trials(exp)
    assert len(before) == 4, before
    finished_first = sorted(n for n, t in before.items() if t["status"] == "TERMINATED")
    unfinished = sorted(set(before) - set(finished_first))
    checkpointed = [n for n in unfinished if has_checkpoint(exp, n)]
    parent_file = json.loads((exp / "prefsweep_parent_run.json").read_text())

    client = MlflowClient(store)
    parents, children = mlflow_runs(store)
    assert [p.info.run_id for p in parents] == [parent_file["run_id"]]
    finished_runs = {c.info.run_name: c for c in children if c.info.run_name in finished_first}
    assert sorted(finished_runs) == finished_first
    finished_history = {
        name: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, "loss")]
        for name, run in finished_runs.items()
    }
    finished_results = {n: (exp / n / "result.json").read_text() for n in finished_first}

    # 2. --resume
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    output = resumed.stdout + resumed.stderr
    (tmp_path / "resume.log").write_text(output)
    assert resumed.returncode == 0, output[-6000:]
    assert f"MLflow parent run {parent_file['run_id']}" in output

    after = tune_trials(exp)
    assert {n: t["id"] for n, t in after.items()} == {n: t["id"] for n, t in before.items()}  # same trials
    assert all(t["status"] == "TERMINATED" for t in after.values()), after
    # the trials that had finished were not run again: Tune's results and MLflow's runs are untouched
    assert {n: (exp / n / "result.json").read_text() for n in finished_first} == finished_results

    parents, children = mlflow_runs(store)
    assert [p.info.run_id for p in parents] == [parent_file["run_id"]]
    assert parents[0].info.status == "FINISHED"
    names = [c.info.run_name for c in children]
    assert sorted(names) == sorted(before), names  # exactly one child run per trial, no duplicates
    assert all(c.data.tags["mlflow.parentRunId"] == parent_file["run_id"] for c in children)
    assert all(c.info.status == "FINISHED" for c in children), [(c.info.run_name, c.info.status) for c in children]
    by_name = {c.info.run_name: c for c in children}
    rerun_steps = 0
    for name in finished_first:
        assert by_name[name].info.run_id == finished_runs[name].info.run_id
        assert by_name[name].info.start_time == finished_runs[name].info.start_time
        history = [(m.step, m.value, m.timestamp) for m in client.get_metric_history(by_name[name].info.run_id, "loss")]
        assert sorted(history) == sorted(finished_history[name])
        rerun_steps += sum(1 for _, _, ts in history if ts > killed_at_ms)
    assert rerun_steps == 0
    # the unfinished trials ran to the end; a checkpointed one went on from its checkpoint, not from step 1;
    # the steps it re-ran after its checkpoint were not logged twice: one value per metric and step
    for name in before:
        assert one_value_per_step(client, by_name[name])["loss"] == list(range(1, MAX_STEPS + 1)), name
    assert checkpointed
    resumed_from = {}
    for name in checkpointed:
        new_steps = [m.step for m in client.get_metric_history(by_name[name].info.run_id, "loss")
                     if m.timestamp > killed_at_ms]
        assert new_steps and min(new_steps) > SAVE_STEPS, (name, sorted(new_steps))  # not from step 1
        resumed_from[name] = min(new_steps) - 1

    board = client.download_artifacts(parent_file["run_id"], "leaderboard.csv", str(tmp_path / "parent"))
    rows = [line for line in Path(board).read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 4, rows
    assert all(any(name in row for row in rows) for name in before)
    print(f"driver death: finished before the kill {finished_first}, resumed {unfinished} "
          f"(from a checkpoint: {checkpointed}, at steps {resumed_from}); steps rerun by finished trials: {rerun_steps}; "
          f"child runs {len(children)} for {len(before)} trials; {time.monotonic() - started:.0f}s")
