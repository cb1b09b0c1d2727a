"""Sweeps submitted the way a cluster user does: `ray job submit --working-dir . -- python -m rayjobs.sweep`.

A real Ray head is started for this module (`ray start --head --block` on 127.0.0.1, token auth with a
token file of its own, its own temp dir and ports) and stopped at the end by signalling the process
this module started, which takes down the node it owns. A user's own Ray on the machine is untouched.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@dataclass
class Head:
    env: dict
    """Environment of a client of this head: token auth, the head's job server, the venv's python."""
    root: Path
    dashboard: str


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for_dashboard(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (401 without a token) is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Ray dashboard at {url} did not come up in {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the node this module started: SIGTERM `ray start --block` (its handler stops the node's
    processes), then SIGKILL whatever of that process tree is left after a short grace period."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(signal.SIGTERM)
    gone, alive = psutil.wait_procs([psutil.Process(proc.pid), *tree], timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head():
    # Ray puts unix sockets under its temp dir: keep the path short (sun_path holds 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="psray-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this venv's
    })
    gcs, dashboard, client, agent = free_ports(4)
    log = open(root / "ray_start.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--temp-dir={root / 'ray'}", "--num-cpus=2",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(url, proc)
        yield Head(env={**env, "RAY_API_SERVER_ADDRESS": url}, root=root, dashboard=url)
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def base_config(tiny_model: Path, out: Path, **overrides) -> dict:
    base = {
        "model_name_or_path": str(tiny_model),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "dpo_en_demo",
        "dataset_dir": "data",  # relative: resolved in the job's working dir (the uploaded checkout)
        "template": "default",
        "cutoff_len": 96,
        "max_samples": 40,
        "val_size": 8,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1.0e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 6,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 3,
        "save_strategy": "no",
        "plot_loss": True,
        "report_to": "none",
        "seed": 3,
    }
    base.update(overrides)
    return base


def submit(head: Head, spec: dict, tmp: Path, submission_id: str, mlflow_uri: str) -> str:
    """`ray job submit` the sweep from the checkout; return the job's output (it must succeed)."""
    spec_path = tmp / f"{spec['name']}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": spec["name"]}}
    run = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--submission-id", submission_id, "--working-dir", ".",
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "rayjobs.sweep", str(spec_path)],
        cwd=REPO, env=head.env, capture_output=True, text=True, timeout=400,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    status = subprocess.run([str(BIN / "ray"), "job", "status", submission_id], env=head.env,
                            capture_output=True, text=True, timeout=60)
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    return output


def open_png(client: MlflowClient, run_id: str, name: str, tmp: Path) -> tuple[int, int]:
    path = client.download_artifacts(run_id, name, str(tmp))
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_job_submitted_sweep_is_recorded_in_mlflow(ray_head, tiny_model, tmp_path):
    """2 trials (sigmoid, simpo): one parent run, two children with curves, params, plots; a leaderboard."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = {
        "name": "jobtest",
        "base": base_config(tiny_model, tmp_path / "outputs", ref_cache_dir=str(tmp_path / "ref_cache")),
        "space": {
            "pref_loss": {"grid": ["sigmoid", "simpo"]},
            "pref_beta": {"by": "pref_loss", "values": {"sigmoid": {"loguniform": [0.05, 0.5]},
                                                         "simpo": {"uniform": [2.0, 4.0]}}},
            "simpo_gamma": {"by": "pref_loss", "values": {"simpo": {"uniform": [0.3, 1.0]}}},
        },
        "trial_resources": {"num_workers": 1},
        "storage_path": str(tmp_path / "ray_results"),
    }
    output = submit(ray_head, spec, tmp_path, "prefsweep-test-jobtest", store)
    assert "Leaderboard" in output
    assert f"mlflow ui --backend-store-uri {store}" in output
    # the driver built the sigmoid trial's reference log-probs once, before the trials (simpo needs none)
    assert "reference log-probs miss" in output
    assert len(list((tmp_path / "ref_cache").glob("*/manifest.json"))) == 1

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("jobtest")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    # reference-cache tags in the store: the driver built the one cache (parent: miss, its build time);
    # the sigmoid trial read it (hit, built nothing: 0 s), simpo is reference-free (off)
    assert parent.data.tags["prefsweep.ref_cache"] == "miss"
    assert float(parent.data.tags["prefsweep.ref_cache_build_s"]) > 0
    cache_tags = {c.data.params["pref_loss"]: (c.data.tags.get("prefsweep.ref_cache"),
                                               c.data.tags.get("prefsweep.ref_cache_build_s")) for c in children}
    assert cache_tags == {"sigmoid": ("hit", "0.000"), "simpo": ("off", "0.000")}
    assert {c.data.params["pref_loss"] for c in children} == {"sigmoid", "simpo"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.run_name.startswith("trial_00")
        assert float(child.data.params["pref_beta"]) > 0
        history = client.get_metric_history(child.info.run_id, "rewards/accuracies")
        assert len({m.step for m in history}) >= 3, history
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"training_loss.png", "training_rewards_accuracies.png"} <= artifacts, artifacts
        for png in ("training_loss.png", "training_rewards_accuracies.png"):
            width, height = open_png(client, child.info.run_id, png, tmp_path / child.info.run_name)
            assert width > 100 and height > 100
        # the conditional space: only the simpo trial has a simpo_gamma, in its resolved config too
        resolved = yaml.safe_load((tmp_path / "outputs" / child.info.run_name / "resolved_config.yaml").read_text())
        if resolved["pref_loss"] == "simpo":
            assert 0.3 <= resolved["simpo_gamma"] <= 1.0
            assert 2.0 <= resolved["pref_beta"] <= 4.0
        else:
            assert resolved["simpo_gamma"] is None
            assert 0.05 <= resolved["pref_beta"] <= 0.5

    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.md"} <= parent_artifacts, parent_artifacts
    leaderboard = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path / "parent"))
    assert sum(c.info.run_name in Path(leaderboard).read_text() for c in children) == 2
    plots = sorted(p for p in parent_artifacts if p.endswith(".png"))
    assert plots, parent_artifacts
    for png in plots:
        open_png(client, parent.info.run_id, png, tmp_path / "parent")


def asha_spec(name: str, tiny_model: Path, tmp_path: Path) -> dict:
    """3 trials one at a time, ranked on training loss, ASHA rungs every 3 steps. SimPO's loss starts near
    0.97 (-log sigmoid(-gamma), gamma 0.5) and sigmoid's at 0.693, so each SimPO trial reaches its first
    rung behind the median of those before it and is stopped there, while its Ray Train run is mid-way."""
    return {
        "name": name,
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


def check_asha_stops(name: str, tmp_path: Path, store: str) -> set[int]:
    """What `asha_spec`'s sweep must leave: the sigmoid trial trained to the end, both SimPO trials stopped
    early and their Train runs aborted soon after (MLflow: KILLED, no step near the end), one trial actor for
    all three. Returns the pids Tune recorded for the trials (that actor's)."""
    last_steps, pids = {}, {}
    for result_file in (tmp_path / "ray_results" / name).glob("trial_*/result.json"):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        last_steps[result_file.parent.name] = max(r["step"] for r in results)
        pids[result_file.parent.name] = {r["pid"] for r in results}
    stopped = ["trial_001_simpo_beta2_gamma0.5", "trial_002_simpo_beta2.5_gamma0.5"]
    assert sorted(last_steps) == ["trial_000_sigmoid_beta0.1", *stopped], last_steps
    assert last_steps["trial_000_sigmoid_beta0.1"] == 9, last_steps
    assert all(last_steps[n] < 9 for n in stopped), f"not stopped early: {last_steps}"
    assert len(set().union(*pids.values())) == 1, pids  # one actor ran every trial

    for trial in last_steps:
        resolved = yaml.safe_load((tmp_path / "outputs" / trial / "resolved_config.yaml").read_text())
        assert (resolved["simpo_gamma"] is not None) == (resolved["pref_loss"] == "simpo"), trial

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in r.data.tags}
    assert {n: r.info.status for n, r in runs.items()} == {
        "trial_000_sigmoid_beta0.1": "FINISHED", stopped[0]: "KILLED", stopped[1]: "KILLED"}
    for trial in stopped:  # aborted a few steps past its stop, not trained to the end
        steps = [m.step for m in client.get_metric_history(runs[trial].info.run_id, "loss")]
        assert last_steps[trial] <= max(steps) < 9, (trial, steps)
    return set().union(*pids.values())


def test_asha_stops_trials_early_and_their_actor_runs_the_next_trial(ray_head, tiny_model, tmp_path):
    """`asha_spec` as a job on a running cluster, where each Train run's controller is Ray's actor.

    One trial actor runs all three (Tune's reuse_actors): Tune hands a stopped trial's actor to the next
    trial only once the stopped trial's thread has ended, which it does only after aborting its Train run
    (else Tune's reset times out and the next trial errors); the aborted run trains no further."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submit(ray_head, asha_spec("ashatest", tiny_model, tmp_path), tmp_path, "prefsweep-test-ashatest", store)
    check_asha_stops("ashatest", tmp_path, store)


def test_demo_spec_submitted_from_a_fresh_checkout_after_make_demo(ray_head, tiny_model, tmp_path):
    """The README's newcomer path: `make demo`, then `ray job submit --working-dir . -- python -m
    rayjobs.sweep sweeps/demo.yaml`. Ray uploads no git-ignored file, so the job's working dir has no
    models/tiny-llama; the driver builds the same tiny model there (sweep key `tiny_model`) and the trial
    trains on it (the reward model likewise). Kept cheap with overrides a user could type: one trial of 2 steps."""
    checkout = tmp_path / "checkout"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    for name in ("tiny-llama", "tiny-reward"):  # what `make demo` leaves behind (not uploaded by Ray)
        shutil.copytree(tiny_model, checkout / "models" / name)
    storage = tmp_path / "ray_results"
    run = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", "-m", "rayjobs.sweep",
         "sweeps/demo.yaml", "num_samples=1", "space={pref_beta: {grid: [0.1]}}", "max_steps=2", "eval_steps=2",
         "eval_generate=1", "eval_generate_max_new_tokens=4",
         f"storage_path={storage}"],
        cwd=checkout, env=head_env_without_mlflow(ray_head), capture_output=True, text=True, timeout=400,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "prefsweep: built the tiny model at" in output  # the upload did not carry the user's copy
    assert "prefsweep: built the tiny reward model at" in output
    assert "sweep 'demo' finished: 1 trials, 0 failed" in output
    (trial,) = (storage / "demo").glob("trial_000_sigmoid_beta0.1")
    reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in reports if "loss" in r}
    # logged at step 2 (demo logging_steps), the mean of steps 1-2: the policy starts equal to its
    # reference and warmup gives step 1 a learning rate of 0, so both losses are log 2
    assert losses == pytest.approx({2: math.log(2)}, abs=1e-5)


def head_env_without_mlflow(head: Head) -> dict:
    """The client's environment as a newcomer has it: no MLflow settings (the job's default store)."""
    return {k: v for k, v in head.env.items() if not k.startswith("MLFLOW_")}
