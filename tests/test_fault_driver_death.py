"""Driver death: what the sweep driver's `--resume` reads back, and where each guarantee is tested.

The driver SIGKILLed mid-sweep and `python -m rayjobs.sweep SPEC --resume` finishing it (finished trials
untouched in Tune and MLflow, 0 steps re-run by them, one child run per trial under the one parent run, a
checkpointed trial going on from its checkpoint with at most `save_steps` lost, one value per metric and
step) is tested on the more demanding setup: a long-lived two-node head with the sweep's state in a bucket,
resumed from the bucket alone (`tests/test_cluster_two_nodes.py`). A driver whose embedded local Ray goes
down with it, then a fresh local Ray on `--resume`, is `tests/test_fault_interrupt.py` (Ctrl-C).

Here: `--resume` with nothing to resume, and the readers of Tune's and MLflow's state those tests share.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

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


def test_resume_with_nothing_to_resume_names_the_missing_state(driver_env, tmp_path):
    """`--resume` where no sweep ran: exit 2 and a clear error naming the experiment path (before any Ray)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tmp_path / "ray_results" / NAME
    spec = {"name": NAME, "base": base_config(Path("models/tiny-llama"), tmp_path / "outputs", max_steps=MAX_STEPS),
            "space": {"pref_loss": {"grid": ["sigmoid", "ipo"]}}, "storage_path": str(tmp_path / "ray_results")}
    spec_path = tmp_path / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**driver_env, "MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": NAME}
    nothing = subprocess.run([sys.executable, "-m", "rayjobs.sweep", str(spec_path), "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2, nothing.stdout + nothing.stderr
    assert f"no sweep state to resume at {exp}" in nothing.stderr
    assert not exp.exists()
