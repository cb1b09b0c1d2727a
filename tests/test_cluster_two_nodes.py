"""Sweeps on a real two-node cluster (`tests/ray_cluster.py`: `ray start --head` + a second `ray start
--address` node on 127.0.0.1, token auth), shared by every test here (module-scoped, ~45 s to start):

- the token: a client without it, or with a wrong one, is refused by the cluster and its dashboard;
- a long-lived head: the sweep driver (attached with RAY_ADDRESS) is SIGKILLed halfway and `--resume`
  against the same, still running head finishes the sweep;
- load: 32 short trials, 4 at a time over both nodes; the driver's memory is sampled throughout, and a trial
  whose Tune state stops moving fails the test naming it (see STALL_S);
- the second node is lost (its raylet SIGKILLed) mid-sweep: its trials go on from their last checkpoints
  on the head.

The driver runs as `python -m rayjobs.sweep` in a process group of its own, as a user's would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.ray_cluster import Cluster, start_cluster
from tests.test_fault_driver_death import has_checkpoint, mlflow_runs, one_value_per_step, tune_trials
from tests.test_mlflow_outage import expected_points, server_points
from tests.test_ray_sweep import REPO, base_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("PREFSWEEP_CLUSTER_TESTS") != "1",
    reason="the two-node cluster tests take ~5-9 min on 2 cores, more than CI's 25-minute budget leaves; run with PREFSWEEP_CLUSTER_TESTS=1")]


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=2)
    try:
        cluster.add_node2(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


def write_spec(tmp: Path, spec: dict) -> Path:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def driver_env(cluster: Cluster, store: str, name: str) -> dict:
    return {**cluster.env, "MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": name}


def tune_reports(trial_dir: Path) -> list[dict]:
    """Every report the trial made to Tune so far, in order (a line caught mid-write is left out). Each
    carries the `step` and the `pid` of the trial actor that made it (a restored trial's is a new one)."""
    path = trial_dir / "result.json"
    reports = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            reports.append(json.loads(line))
        except ValueError:
            pass
    return reports


def reported_steps(trial_dir: Path) -> list[int]:
    return [r["step"] for r in tune_reports(trial_dir)]


def spooled_steps(output_dir: Path) -> list[list[int]]:
    """Per attempt of the trial's run (each opens its MLflow spool with a header line), the `loss` steps its
    rank 0 spooled: the worker's own record of the steps it trained (re-run steps are not spooled again)."""
    attempts: list[list[int]] = []
    path = output_dir / "mlflow_spool.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            item = json.loads(line)
        except ValueError:  # a line caught mid-write
            continue
        if "tracking_uri" in item:
            attempts.append([])
        elif item.get("op") == "metrics":
            attempts[-1] += [step for key, _, _, step in item["metrics"] if key == "loss"]
    return attempts


# ------------------------------------------------------------------------------------------ the token


def _connect(env: dict, address: str) -> subprocess.CompletedProcess:
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED', ray.cluster_resources()['CPU'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_client_without_the_token_is_refused(cluster, tmp_path):
    no_token = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    no_token.update({"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)})  # no ~/.ray/auth_token either
    refused = _connect(no_token, cluster.address)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "InvalidAuthToken: Authentication token is missing or incorrect" in refused.stderr, refused.stderr[-3000:]

    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    wrong_env = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    refused = _connect(wrong_env, cluster.address)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "InvalidAuthToken" in refused.stderr, refused.stderr[-3000:]

    # the dashboard's HTTP API (where `ray job submit` goes) wants it too; with it, it answers (every
    # other test here connects with the token)
    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=30)
    assert denied.value.code in (401, 403)
    request = urllib.request.Request(f"{cluster.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


# ------------------------------------------------------------------------------------ the driver


def start_driver(spec_path: Path, env: dict, log_path: Path, *extra: str) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", "rayjobs.sweep", str(spec_path), *extra], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(driver: subprocess.Popen, log_path: Path, ready, timeout: float, what: str):
    """Poll `ready()` until it returns something truthy (returned); the driver must still be running."""
    deadline = time.monotonic() + timeout
    while True:
        assert driver.poll() is None, f"driver exited ({driver.returncode}) before {what}:\n{log_path.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{log_path.read_text()[-4000:]}"
        found = ready()
        if found:
            return found
        time.sleep(0.5)


@pytest.mark.timeout(1800)
def test_driver_killed_then_resumed_against_the_same_long_lived_head(cluster, tiny_model, tmp_path):
    """4 trials, 2 at a time; once 2 finished and a running one holds a checkpoint, the driver (only the
    driver: the cluster runs on) gets SIGKILL; `--resume` on the same cluster finishes the other 2."""
    name, save_steps, max_steps = "headlives", 3, 8
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tmp_path / "ray_results" / name
    spec_path = write_spec(tmp_path, {
        "name": name,
        "base": base_config(tiny_model, tmp_path / "outputs", max_steps=max_steps, eval_strategy="no", val_size=0,
                            plot_loss=False, save_strategy="steps", save_steps=save_steps),
        "space": {"pref_loss": {"grid": ["sigmoid", "ipo", "hinge", "simpo"]}},
        "metric": "loss", "mode": "min", "reference_cache": False, "max_concurrent_trials": 2,
        "trial_resources": {"num_workers": 1}, "storage_path": str(tmp_path / "ray_results"),
    })
    env, log_path = driver_env(cluster, store, name), tmp_path / "driver.log"
    driver = start_driver(spec_path, env, log_path)

    def halfway():
        trials = tune_trials(exp)
        done = [n for n, t in trials.items() if t["status"] == "TERMINATED"]
        return len(done) == 2 and any(has_checkpoint(exp, n) for n in set(trials) - set(done))

    try:
        wait_until(driver, log_path, halfway, 900, "halfway point")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    killed_at_ms = int(time.time() * 1000)
    before = tune_trials(exp)
    # the steps each trial's rank 0 had trained (its MLflow spool is written as it goes, unlike Tune's view)
    trained = {n: max(sum(spooled_steps(tmp_path / "outputs" / n), []), default=0) for n in before}
    checkpointed = {n for n in before if has_checkpoint(exp, n)}
    finished_first = sorted(n for n, t in before.items() if t["status"] == "TERMINATED")
    finished_results = {n: (exp / n / "result.json").read_text() for n in finished_first}
    parent_id = json.loads((exp / "prefsweep_parent_run.json").read_text())["run_id"]

    started = time.monotonic()
    resumed = subprocess.run([sys.executable, "-m", "rayjobs.sweep", str(spec_path), "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    resume_s = time.monotonic() - started
    assert f"MLflow parent run {parent_id}" in output

    after = tune_trials(exp)
    assert {n: t["id"] for n, t in after.items()} == {n: t["id"] for n, t in before.items()}
    assert all(t["status"] == "TERMINATED" for t in after.values()), after
    assert {n: (exp / n / "result.json").read_text() for n in finished_first} == finished_results  # not rerun

    client = MlflowClient(store)
    parents, children = mlflow_runs(store, name)
    assert [p.info.run_id for p in parents] == [parent_id] and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(before)  # one child run per trial
    rerun = 0
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert one_value_per_step(client, child)["loss"] == list(range(1, max_steps + 1)), child.info.run_name
        if child.info.run_name in finished_first:
            rerun += sum(m.timestamp > killed_at_ms for m in client.get_metric_history(child.info.run_id, "loss"))
    assert rerun == 0
    resumed_from, lost = {}, {}
    for trial in sorted(set(before) - set(finished_first)):
        reports = tune_reports(exp / trial)
        new = [r["step"] for r in reports if r["pid"] == reports[-1]["pid"]]  # the resumed trial actor's
        resumed_from[trial] = new[0] - 1
        lost[trial] = trained[trial] - resumed_from[trial]
        if trial in checkpointed:  # it went on from its checkpoint (a multiple of save_steps), not step 1
            assert resumed_from[trial] >= save_steps and resumed_from[trial] % save_steps == 0, (trial, new)
        assert 0 <= lost[trial] <= save_steps, (trial, new, lost[trial])
    assert any(resumed_from.values()), resumed_from
    print(f"long-lived head: finished before the kill {finished_first}; resumed at steps {resumed_from}, steps lost {lost}; "
          f"finished trials' steps rerun {rerun}; child runs {len(children)} for {len(before)} trials; "
          f"--resume took {resume_s:.0f}s")


# ------------------------------------------------------------------------------- losing a node


def node2_trials(cluster: Cluster) -> set[str]:
    """The trials whose rank 0 trains on node2: a Ray Train worker process of that node holds the trial's
    MLflow spool (`<output_dir>/<trial>/mlflow_spool.jsonl`) open."""
    try:
        processes = psutil.Process(cluster.procs["node2"].pid).children(recursive=True)
    except (KeyError, psutil.NoSuchProcess):
        return set()
    found = set()
    for process in processes:
        try:
            found |= {Path(f.path).parent.name for f in process.open_files() if f.path.endswith("mlflow_spool.jsonl")}
        except psutil.Error:
            pass
    return found


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


@pytest.mark.timeout(1200)
def test_losing_the_second_node_mid_sweep(cluster, tiny_model, tmp_path):
    """4 identical trials (the same config and seed), 4 at a time over both nodes; node2's raylet gets SIGKILL
    while its trials are between checkpoints. Their Ray Train runs (`ray.max_failures: 2`) restart the worker
    group on the head, once it has room, from their last checkpoints; their losses must equal the
    uninterrupted trials' at every step."""
    if "node2" not in cluster.procs:
        cluster.add_node2(num_cpus=2)
    name, save_steps, max_steps = "losenode", 4, 24
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tmp_path / "ray_results" / name
    spec_path = write_spec(tmp_path, {
        "name": name,
        "base": {**base_config(tiny_model, tmp_path / "outputs", max_steps=max_steps, eval_strategy="no", val_size=0,
                               plot_loss=False, save_strategy="steps", save_steps=save_steps),
                 "ray": {"max_failures": 2}},
        "space": {"pref_loss": {"grid": ["sigmoid"]}},
        "num_samples": 4, "metric": "loss", "mode": "min", "reference_cache": False, "max_concurrent_trials": 4,
        "trial_resources": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
        "storage_path": str(tmp_path / "ray_results"),
    })
    log_path = tmp_path / "driver.log"
    driver = start_driver(spec_path, driver_env(cluster, store, name), log_path)

    def node2_between_checkpoints():
        """Trials train on node2, each past a checkpoint Ray Train holds and not at the next one."""
        on_node2 = node2_trials(cluster)
        for trial in on_node2:
            done = max((spooled_steps(tmp_path / "outputs" / trial) or [[]])[-1], default=0)
            if not checkpoint_step(exp, trial) or done % save_steps == 0 or done >= max_steps - 1:
                return None
        return on_node2

    try:
        on_node2 = wait_until(driver, log_path, node2_between_checkpoints, 600, "node2 trial between checkpoints")
        before = tune_trials(exp)
        snapshot_steps = {n: checkpoint_step(exp, n) for n in before}  # what Ray Train restores from
        killed = cluster.kill_node2()
        killed_at = time.monotonic()
        assert driver.wait(timeout=900) == 0, log_path.read_text()[-6000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished_first = sorted(n for n, t in before.items() if t["status"] == "TERMINATED")
    after = tune_trials(exp)
    assert len(after) == 4 and all(t["status"] == "TERMINATED" for t in after.values()), after

    restored, lost, resumed_from = [], {}, {}
    for trial in sorted(after):
        attempts = spooled_steps(tmp_path / "outputs" / trial)
        steps = reported_steps(exp / trial)
        if len(attempts) == 1:  # trained on the head throughout: no step twice
            assert all(b >= a for a, b in zip(steps, steps[1:])), (trial, steps)
            continue
        assert trial not in finished_first
        restored.append(trial)  # its workers were on node2: a second attempt opened the run again
        resumed_from[trial] = snapshot_steps[trial]
        lost[trial] = max(attempts[0], default=0) - resumed_from[trial]
        assert resumed_from[trial] % save_steps == 0, (trial, steps)
        assert 0 <= lost[trial] <= save_steps, (trial, attempts, resumed_from[trial])
        if resumed_from[trial]:  # the new attempt went on from that checkpoint, not from step 1
            assert steps.count(1) == 1 and resumed_from[trial] + 1 in steps, (trial, steps)
    assert sorted(restored) == sorted(on_node2), (restored, on_node2)  # exactly node2's trials
    uninterrupted = sorted(set(after) - set(restored))

    client = MlflowClient(store)
    parents, children = mlflow_runs(store, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(after)  # one run per trial: 0 duplicates
    histories = {}
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert one_value_per_step(client, child)["loss"] == list(range(1, max_steps + 1)), child.info.run_name
        histories[child.info.run_name] = loss_history(client, child)
    reference = histories[uninterrupted[0]]
    worst = 0.0
    for trial in [*restored, *uninterrupted[1:]]:
        worst = max(worst, max(abs(histories[trial][s] - reference[s]) for s in reference))
    assert worst <= 1e-4, worst
    finals = {n: json.loads((exp / n / "result.json").read_text().splitlines()[-1])["loss"] for n in after}
    assert max(finals.values()) - min(finals.values()) <= 1e-4, finals
    print(f"lost node2: restored {restored} (resumed at steps {resumed_from}, steps lost {lost}), uninterrupted "
          f"{uninterrupted}; finished trials rerun 0; child runs {len(children)} for 4 trials; max |loss restored - "
          f"uninterrupted| {worst:.2e}; {killed} node2 processes killed; the sweep ended {time.monotonic() - killed_at:.0f}s after the kill")


# ------------------------------------------------------------------------------------------- load


# A trial whose Tune state has not moved for this long is hung, not slow: under nice 19 next to a benchmark a
# trial of this sweep took at most ~200 s from start to end. (The one hang seen: 31 of 32 trials finished, the
# last stayed RUNNING in Tune after its workers had returned and ended their MLflow run.)
STALL_S = 600


def spool_end(output_dir: Path) -> str:
    """How the trial's MLflow run last ended by its spool ('FINISHED', ...), or 'not ended'."""
    path = output_dir / "mlflow_spool.jsonl"
    ended = "not ended"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("op") in ("open", "end"):
            ended = item.get("status", "not ended") if item["op"] == "end" else "not ended"
    return ended


def ray_processes(cluster: Cluster) -> list[str]:
    """The titles of the cluster's Ray worker processes (`ray::TrainController.run`, `ray::_QueueActor`, ...)."""
    titles = []
    for proc in cluster.procs.values():
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::"):
                titles.append(title.split()[0])
    return sorted(titles)


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


@pytest.mark.timeout(1800)
def test_32_short_trials_4_at_a_time_lose_no_point_and_the_driver_stays_flat(cluster, tiny_model, tmp_path):
    """32 trials of 2 steps, 4 at a time over both nodes; the driver's RSS is sampled every second."""
    if "node2" not in cluster.procs:
        cluster.add_node2(num_cpus=2)
    name, trials = "load32", 32
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tmp_path / "ray_results" / name
    spec_path = write_spec(tmp_path, {
        "name": name,
        "base": base_config(tiny_model, tmp_path / "outputs", max_steps=2, eval_strategy="no", val_size=0,
                            plot_loss=False, max_samples=8, cutoff_len=64),
        "space": {"pref_beta": {"grid": [0.1, 0.2]}},
        "num_samples": trials // 2, "metric": "loss", "mode": "min", "reference_cache": False,
        "max_concurrent_trials": 4, "trial_resources": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
        "storage_path": str(tmp_path / "ray_results"),
    })
    log_path = tmp_path / "driver.log"
    started = time.monotonic()
    driver = start_driver(spec_path, driver_env(cluster, store, name), log_path)
    samples = []  # (seconds, RSS MiB, trials finished)
    seen: dict[str, tuple] = {}
    try:
        process = psutil.Process(driver.pid)
        while driver.poll() is None:
            try:
                rss = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                break
            now = time.monotonic()
            done = sum(t["status"] == "TERMINATED" for t in tune_trials(exp).values())
            samples.append((now - started, rss, done))
            hung = stalled(exp, seen, now)
            assert hung is None, (
                f"trial {hung} hung: {seen[hung][0][0]} in Tune with {seen[hung][0][1]} reports and no change for "
                f"{STALL_S}s; its last report {(tune_reports(exp / hung) or [{}])[-1].get('step')}, its MLflow run "
                f"{spool_end(tmp_path / 'outputs' / hung)}; {done} of {trials} trials done; Ray processes "
                f"{ray_processes(cluster)}\n{log_path.read_text()[-3000:]}")
            time.sleep(1.0)
        assert driver.wait(timeout=60) == 0, log_path.read_text()[-6000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    wall = time.monotonic() - started
    after = tune_trials(exp)
    assert len(after) == trials and all(t["status"] == "TERMINATED" for t in after.values()), after

    client = MlflowClient(store)
    parents, children = mlflow_runs(store, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(after)
    lost = extra = 0
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        expected = expected_points(tmp_path / "outputs" / child.info.run_name)
        # system/* points come from MLflow's own monitor (sampled, not spooled), when a trial outlives its interval
        got = Counter({p: n for p, n in server_points(client, child.info.run_id).items() if not p[0].startswith("system/")})
        lost += sum((expected - got).values())
        extra += sum((got - expected).values())
        assert {k for k, _, _ in expected} >= {"loss", "rewards/accuracies"}
    assert (lost, extra) == (0, 0)

    # flat: once the first trials are done (imports, Tune's and MLflow's first allocations behind it), the
    # driver grows by less than 1 MiB per trial
    warm = next(rss for _, rss, done in samples if done >= 4)
    rss = [r for _, r, _ in samples]
    end, peak = rss[-1], max(rss)
    assert peak - warm < trials, (warm, end, peak)
    print(f"load: {trials} trials in {wall:.0f}s, 0 failed; points lost {lost}, doubled {extra}; driver RSS "
          f"start {rss[0]:.0f} MiB, after 4 trials {warm:.0f}, end {end:.0f}, peak {peak:.0f} ({len(samples)} samples)")
