"""Driving a sweep on the two-node test cluster (`tests/ray_cluster.py`) and reading what it left: the
driver as a user starts it, Tune's per-trial reports, each trial's MLflow spool, Ray Train's checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

from rayjobs.worker import report_interval
from tests.ray_cluster import Cluster
from tests.test_fault_driver_death import tune_trials
from tests.test_ray_sweep import REPO


def write_spec(tmp: Path, spec: dict) -> Path:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def driver_env(cluster: Cluster, store: str, name: str, extra: dict | None = None) -> dict:
    return {**cluster.env, **(extra or {}), "MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": name}


def start_driver(spec_path: Path, env: dict, log_path: Path, *extra: str) -> subprocess.Popen:
    """`python -m rayjobs.sweep SPEC` in a process group of its own, as a user's shell starts it."""
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", "rayjobs.sweep", str(spec_path), *extra], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(driver: subprocess.Popen, log_path: Path, ready, timeout: float, what: str, poll_s: float = 0.25):
    """Poll `ready()` until it returns something truthy (returned); the driver must still be running."""
    deadline = time.monotonic() + timeout
    while True:
        assert driver.poll() is None, f"driver exited ({driver.returncode}) before {what}:\n{log_path.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{log_path.read_text()[-4000:]}"
        found = ready()
        if found:
            return found
        time.sleep(poll_s)


def json_lines(text: str) -> list[dict]:
    """The JSON objects of a file written line by line (a line caught mid-write is left out)."""
    items = []
    for line in text.splitlines():
        try:
            items.append(json.loads(line))
        except ValueError:
            pass
    return items


def tune_reports(trial_dir: Path) -> list[dict]:
    """Every report the trial made to Tune so far, in order. Each carries the `step` and the `pid` of the
    trial actor that made it (a restored trial's is a new one)."""
    path = trial_dir / "result.json"
    return json_lines(path.read_text()) if path.is_file() else []


def reported_steps(trial_dir: Path) -> list[int]:
    return [r["step"] for r in tune_reports(trial_dir)]


def spool_items(output_dir: Path) -> list[dict]:
    path = output_dir / "mlflow_spool.jsonl"
    return json_lines(path.read_text()) if path.is_file() else []


def spooled_steps(output_dir: Path, before_ms: float = math.inf) -> list[list[int]]:
    """Per attempt of the trial's run (each opens its MLflow spool with a header line), the `loss` steps its
    rank 0 spooled: the worker's own record of the steps it trained (re-run steps are not spooled again).
    `before_ms`: only steps logged before that time (ms since the epoch, the points' own timestamps)."""
    attempts: list[list[int]] = []
    for item in spool_items(output_dir):
        if "tracking_uri" in item:
            attempts.append([])
        elif item.get("op") == "metrics":
            attempts[-1] += [step for key, _, ts, step in item["metrics"] if key == "loss" and ts < before_ms]
    return attempts


def spool_end(output_dir: Path) -> str:
    """How the trial's MLflow run last ended by its spool ('FINISHED', ...), or 'not ended'."""
    ended = "not ended"
    for item in spool_items(output_dir):
        if item.get("op") in ("open", "end"):
            ended = item.get("status", "not ended") if item["op"] == "end" else "not ended"
    return ended


def steps_at_risk(save_steps: int, max_steps: int, logging_steps: int = 1) -> int:
    """The most steps a trial can train past the checkpoint it is restored from when its driver or node dies:
    one save interval, plus the steps it trains while that checkpoint's report waits in the worker's one-slot
    result queue for the Ray Train controller's next poll (every 2 s; the next report blocks), which may never
    come. Every step after it is re-run on resume, never logged twice."""
    return save_steps + report_interval(0, max_steps, logging_steps)


def checkpoint_step(exp: Path, trial: str) -> int:
    """The step of the trial's latest checkpoint registered by Ray Train (0: none yet)."""
    snapshot = exp / trial / "train" / "checkpoint_manager_snapshot.json"
    try:
        name = (json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (OSError, ValueError):
        return 0
    return int(name.rsplit("-", 1)[1]) if name else 0


def loss_history(client: MlflowClient, run) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}


# A trial whose Tune state has not moved for this long is hung, not slow: under nice 19 next to a benchmark a
# trial of this sweep took at most ~200 s from start to end. (The one hang seen: 31 of 32 trials finished, the
# last stayed RUNNING in Tune after its workers had returned and ended their MLflow run.)
STALL_S = 600


def stalled(exp: Path, seen: dict[str, tuple], now: float) -> str | None:
    """The first unfinished trial whose Tune status and report count have not changed for STALL_S (`seen`:
    trial -> ((status, reports), since), updated here), or None."""
    for name, trial in tune_trials(exp).items():
        if trial["status"] == "TERMINATED":
            continue
        state = (trial["status"], len(tune_reports(exp / name)))
        if name not in seen or seen[name][0] != state:
            seen[name] = (state, now)
        elif now - seen[name][1] > STALL_S:
            return name
    return None
