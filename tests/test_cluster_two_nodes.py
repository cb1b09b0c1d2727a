"""Sweeps on a real two-node cluster (`tests/ray_cluster.py`: `ray start --head` + a second `ray start
--address` node on 127.0.0.1, token auth), started once for every test here, with a moto S3 endpoint
(`tests/s3_server.py`) its nodes can reach:

- the token: a client without it, or with a wrong one, is refused by the cluster and its dashboard;
- everything in a bucket, on a long-lived head: a sweep whose storage and MLflow artifacts are in S3; its
  driver (attached with RAY_ADDRESS) is SIGKILLed halfway and `--resume` from a fresh directory, against the
  same, still running cluster, finishes it from the bucket alone;
- load: 32 short trials, 4 at a time over both nodes; the driver's memory is sampled throughout, and a trial
  whose Tune state stops moving fails the test naming it (see STALL_S); ~6 min;
- the second node is lost (its raylet SIGKILLed) mid-sweep: its trials go on from their last checkpoints
  on the head (last: node2 stays dead).

The driver runs as `python -m rayjobs.sweep` in a process group of its own, as a user's would. The load and
lost-node tests run only with PREFSWEEP_CLUSTER_TESTS=1 (see CLUSTER_TESTS).
"""

from __future__ import annotations

import json
import os
import shutil
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
from mlflow import MlflowClient

from tests.cluster_sweeps import (
    STALL_S,
    checkpoint_step,
    driver_env,
    loss_history,
    reported_steps,
    spool_end,
    spooled_steps,
    stalled,
    start_driver,
    steps_at_risk,
    tune_reports,
    wait_until,
    write_spec,
)
from tests.fault_injection import kill_driver_when
from tests.mlflow_servers import MlflowServer
from tests.ray_cluster import Cluster, CpuByKind, start_cluster
from tests.s3_server import Bucket, S3Server
from tests.test_fault_driver_death import mlflow_runs, one_value_per_step, tune_trials
from tests.test_mlflow_outage import expected_points, server_points
from tests.test_ray_sweep import REPO, base_config

# CI runs the token and the bucket tests (with the cluster's start, ~170 s on a quiet 2-core machine; the
# bucket sweep is CI's only driver-death test). The lost node (~120 s) and the 32-trial load (~6 min) run
# with PREFSWEEP_CLUSTER_TESTS=1: with them a fresh-clone `.ci/run` took 28 min (2026-12-04), over its 25.
CLUSTER_TESTS = os.environ.get("PREFSWEEP_CLUSTER_TESTS") == "1"
pytestmark = [pytest.mark.ray, pytest.mark.slow]
beyond_ci = pytest.mark.skipif(
    not CLUSTER_TESTS, reason="longer than CI's 25-minute budget leaves on 2 cores; run with PREFSWEEP_CLUSTER_TESTS=1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    try:
        server.make_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = start_cluster(num_cpus=2, node_env=s3.env())
    try:
        cluster.add_node2(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------ the token


def _connect(env: dict, address: str) -> subprocess.Popen:
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED', ray.cluster_resources()['CPU'])"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_client_without_the_token_is_refused(cluster, tmp_path):
    no_token = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    no_token.update({"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)})  # no ~/.ray/auth_token either
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    wrong_env = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    clients = [_connect(no_token, cluster.address), _connect(wrong_env, cluster.address)]  # at once: each waits on Ray
    (out, err), (wrong_out, wrong_err) = (client.communicate(timeout=120) for client in clients)
    assert clients[0].returncode != 0 and "CONNECTED" not in out
    assert "InvalidAuthToken: Authentication token is missing or incorrect" in err, err[-3000:]
    assert clients[1].returncode != 0 and "CONNECTED" not in wrong_out
    assert "InvalidAuthToken" in wrong_err, wrong_err[-3000:]

    # the dashboard's HTTP API (where `ray job submit` goes) wants it too; with it, it answers (every
    # other test here connects with the token)
    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=30)
    assert denied.value.code in (401, 403)
    request = urllib.request.Request(f"{cluster.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


# ----------------------------------------------------- a bucket for everything; the driver dies, the head lives

S3_SWEEP, BUCKET, SAVE_STEPS, MAX_STEPS = "s3sweep", "prefsweep-e2e", 3, 12


@pytest.mark.timeout(1800)
def test_sweep_in_a_bucket_survives_driver_death_on_a_long_lived_head(cluster, s3, tiny_model, tmp_path):
    """`storage_path: s3://...` (Tune's state, checkpoints, the reference cache) and an MLflow server whose
    artifact store is the same bucket. 3 trials, 2 at a time: once one finished and a running one has a
    checkpoint (as the bucket shows them), the driver (only the driver: the cluster runs on) gets SIGKILL;
    `--resume` from a fresh working dir, with the trials' local output dirs deleted, against the same head,
    finishes it from the bucket alone.

    Checked: the reference cache is built once by the driver's shard tasks into `<storage_path>/ref_cache`
    and every trial reads it from there; after the resume 0 finished trials rerun (their Tune results and
    MLflow histories are byte-for-byte the same), one MLflow child run per trial under the one parent, one
    value per metric step, each checkpointed trial goes on from its checkpoint (downloaded from the bucket)
    losing at most `save_steps` steps, and the leaderboard artifact lies in the bucket."""
    started = time.monotonic()
    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts=f"s3://{BUCKET}/mlflow",
                          env=s3.env()).start()
    try:
        sweep_in_a_bucket(cluster, s3, server.url, tiny_model, tmp_path, started)
    finally:
        server.stop()


def sweep_in_a_bucket(cluster: Cluster, s3: S3Server, tracking_uri: str, tiny_model: Path, tmp_path: Path,
                      started: float) -> None:
    bucket = Bucket(s3, BUCKET, "ray", S3_SWEEP)
    env = driver_env(cluster, tracking_uri, S3_SWEEP, extra=s3.env())
    outputs = tmp_path / "outputs"
    spec_path = write_spec(tmp_path, {
        "name": S3_SWEEP,
        "base": base_config(tiny_model, outputs, dataset_dir=str(REPO / "data"), max_samples=24, val_size=0,
                            max_steps=MAX_STEPS, eval_strategy="no", plot_loss=False, save_strategy="steps",
                            save_steps=SAVE_STEPS),
        "space": {"pref_beta": {"grid": [0.1, 0.3, 0.5]}},
        "metric": "loss", "mode": "min", "reference_cache": True, "max_concurrent_trials": 2,
        "trial_resources": {"num_workers": 1}, "storage_path": f"s3://{BUCKET}/ray",
    })
    command = [sys.executable, "-m", "rayjobs.sweep", str(spec_path)]

    def halfway() -> bool:
        """A trial finished, and a running one is past a checkpoint short of its last step. (It may still
        reach it: on a long-lived head the dead driver's trials train on until the head notices the death.)"""
        trials = bucket.tune_trials()
        done = [n for n, t in trials.items() if t["status"] == "TERMINATED"]
        running = [n for n, t in trials.items() if t["status"] != "TERMINATED"]
        return bool(done) and any(0 < bucket.checkpoint_step(n) < MAX_STEPS for n in running)

    first_log = tmp_path / "first.log"  # a generous limit for a loaded CI machine
    kill_driver_when(command, cwd=REPO, env=env, log_path=first_log, ready=halfway, timeout_s=600)
    killed_at_ms = int(time.time() * 1000)
    first_output = first_log.read_text()
    before = bucket.tune_trials()
    finished_first = sorted(n for n, t in before.items() if t["status"] == "TERMINATED")
    checkpointed = sorted(n for n in set(before) - set(finished_first) if bucket.checkpoint_step(n))
    assert finished_first and checkpointed, before
    parent_record = json.loads(bucket.read(f"ray/{S3_SWEEP}/prefsweep_parent_run.json"))
    finished_results = {n: bucket.read(f"ray/{S3_SWEEP}/{n}/result.json") for n in finished_first}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(S3_SWEEP)

    def runs() -> tuple[list, dict]:
        found = client.search_runs([experiment.experiment_id])
        return ([r for r in found if "mlflow.parentRunId" not in r.data.tags],
                {r.info.run_name: r for r in found if "mlflow.parentRunId" in r.data.tags})

    def history(run, key="loss") -> list[tuple]:
        return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, key))

    _, children = runs()
    finished_history = {n: history(children[n]) for n in finished_first}

    # the reference cache: built once, into the bucket under the storage path, by 2 shard tasks
    manifests = [p for p in bucket.files("ray/ref_cache") if p.endswith("/manifest.json")]
    assert len(manifests) == 1, bucket.files("ray/ref_cache")
    manifest = json.loads(bucket.read(manifests[0]))
    assert manifest["shards"] == 2 and manifest["reference_forwards"] == 24
    assert [s["rows"] for s in manifest["files"]["train"]["shards"]] == [12, 12]
    assert f"reference log-probs miss (s3://{BUCKET}/ray/ref_cache/" in first_output

    # --resume from the bucket alone: a fresh working dir, the trials' local output dirs gone; the head,
    # and node2, as they were
    # Steps trained when the driver died. Not what the spool holds when the test looks: on a long-lived head
    # the dead driver's trials train on until the head has stopped them (once to step 7 past a checkpoint at
    # 3 whose successor at 6 no controller registered); that work was done after the kill, not lost by it.
    trained: dict[str, int] = {}
    for _ in range(30):  # a worker of the killed driver's trials may finish writing a file as it dies
        trained = {n: max(sum(spooled_steps(outputs / n, before_ms=killed_at_ms), []), default=0)
                   for n in checkpointed}
        shutil.rmtree(outputs, ignore_errors=True)
        if not outputs.exists():
            break
        time.sleep(1)
    assert not outputs.exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    resume_started = time.monotonic()
    resumed = subprocess.run([*command, "--resume", "--worker-logs"], cwd=fresh, env=env, capture_output=True,
                             text=True, timeout=600)
    resume_s = time.monotonic() - resume_started
    output = resumed.stdout + resumed.stderr
    (tmp_path / "resume.log").write_text(output)
    assert resumed.returncode == 0, output[-6000:]
    assert f"MLflow parent run {parent_record['run_id']}" in output
    assert "reference log-probs hit" in output  # the driver finds the cache in the bucket, builds nothing

    after = bucket.tune_trials()
    assert {n: t["id"] for n, t in after.items()} == {n: t["id"] for n, t in before.items()}
    assert len(after) == 3 and all(t["status"] == "TERMINATED" for t in after.values()), after
    assert {n: bucket.read(f"ray/{S3_SWEEP}/{n}/result.json") for n in finished_first} == finished_results
    parents, children = runs()
    assert [p.info.run_id for p in parents] == [parent_record["run_id"]] and parents[0].info.status == "FINISHED"
    assert sorted(children) == sorted(after)  # one child run per trial
    rerun_steps, resumed_from, lost = 0, {}, {}
    for name in finished_first:
        assert history(children[name]) == finished_history[name]
        rerun_steps += sum(1 for _, _, ts in history(children[name]) if ts > killed_at_ms)
    assert rerun_steps == 0
    for name, run in children.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.tags["prefsweep.ref_cache"] == "hit", name  # read from the bucket
        assert one_value_per_step(client, run)["loss"] == list(range(1, MAX_STEPS + 1)), name
    for name in checkpointed:  # went on from its checkpoint, downloaded from the bucket, not from step 1
        assert f"trial {name} resumes from its latest checkpoint" in output, name
        restored = sorted((outputs / name / "restored").glob("checkpoint-*/trainer_state.json"))
        assert restored, name
        resumed_from[name] = json.loads(restored[-1].read_text())["global_step"]
        assert resumed_from[name] >= SAVE_STEPS and resumed_from[name] % SAVE_STEPS == 0, resumed_from
        lost[name] = trained[name] - resumed_from[name]  # trained before the kill, not kept
        assert 0 <= lost[name] <= steps_at_risk(SAVE_STEPS, MAX_STEPS), (name, trained[name], resumed_from[name])
        # the steps it re-ran after the checkpoint were not sent again; what is new follows what was logged
        new_steps = [s for s, _, ts in history(children[name]) if ts > killed_at_ms]
        assert not new_steps or min(new_steps) > resumed_from[name], (name, new_steps)
    cache_record = json.loads((outputs / checkpointed[0] / "ref_cache.json").read_text())
    assert cache_record["path"].startswith(f"s3://{BUCKET}/ray/ref_cache/"), cache_record

    # MLflow's artifacts went through the server into the bucket
    board = client.download_artifacts(parent_record["run_id"], "leaderboard.csv", str(tmp_path / "board"))
    rows = [line for line in Path(board).read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 3 and all(any(name in row for row in rows) for name in after), rows
    assert any(p.endswith("/leaderboard.csv") for p in bucket.files("mlflow")), bucket.files("mlflow")
    print(f"s3 sweep on a long-lived head: finished before the kill {finished_first}, checkpointed {checkpointed} "
          f"(resumed at steps {resumed_from}, steps lost {lost}); steps rerun by finished trials {rerun_steps}; "
          f"child runs {len(children)} for 3 trials; --resume {resume_s:.0f}s; {time.monotonic() - started:.0f}s")


# ------------------------------------------------------------------------------------------- load


# 32 trials cost ~18 CPU-seconds each (a trial's Ray Train run: the worker, Ray Train's controller,
# placement-group cleaner and sync actor; the Tune trial actors are reused, the report slots shared; see
# BENCHMARKS.md, "After the session-7 cuts"): 356 s at load 3-8 on 2 cores.
@beyond_ci
@pytest.mark.timeout(1800)
def test_32_short_trials_4_at_a_time_lose_no_point_and_the_driver_stays_flat(cluster, tiny_model, tmp_path):
    """32 trials of 2 steps, 4 at a time over both nodes; the driver's RSS is sampled every second."""
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
    cpu = CpuByKind(cluster, driver.pid)
    try:
        process = psutil.Process(driver.pid)
        while driver.poll() is None:
            cpu.sample()
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
                f"{cluster.ray_processes()}\n{log_path.read_text()[-3000:]}")
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
    per_trial = "; ".join(f"{kind} {n} x {secs / n:.1f}s = {secs / trials:.1f}s/trial" for kind, (n, secs) in cpu.table().items())
    print(f"load: CPU-seconds by process kind (lower bounds, sampled each second): {per_trial}")


# ------------------------------------------------------------------------------- losing a node


@beyond_ci
@pytest.mark.timeout(1200)
def test_losing_the_second_node_mid_sweep(cluster, tiny_model, tmp_path):
    """4 identical trials (the same config and seed), 4 at a time over both nodes; node2's raylet gets SIGKILL
    while its trials are past a checkpoint. Their Ray Train runs (`ray.max_failures: 2`) restart the worker
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

    def node2_past_a_checkpoint():
        """Trials train on node2, each past a checkpoint Ray Train holds and short of its last step. (Not
        also "between two checkpoints": a step takes ~0.2 s, and two trials rarely are at once.)"""
        on_node2 = cluster.node2_trials()
        for trial in on_node2:
            done = max((spooled_steps(tmp_path / "outputs" / trial) or [[]])[-1], default=0)
            if not checkpoint_step(exp, trial) or done >= max_steps - 1:
                return None
        return on_node2

    try:
        on_node2 = wait_until(driver, log_path, node2_past_a_checkpoint, 600, "node2 trials past a checkpoint",
                              poll_s=0.1)
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
        assert resumed_from[trial] >= save_steps and resumed_from[trial] % save_steps == 0, (trial, steps)
        assert 0 <= lost[trial] <= steps_at_risk(save_steps, max_steps), (trial, attempts, resumed_from[trial])
        # the new attempt went on from that checkpoint, not from step 1: where Tune's reports go back (a
        # report of a step re-run), they go back to a step after it (rank 0 reports every few steps)
        assert all(b > resumed_from[trial] for a, b in zip(steps, steps[1:]) if b < a), (trial, steps)
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
