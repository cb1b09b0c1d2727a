"""Eight trials of one sweep log at the same moment, each from its own process, through the real callback:
to the default SQLite store (one writer at a time: the classic "database is locked"), and to a
PostgreSQL-backed `mlflow server` that the test starts (skipped, with the reason, where PostgreSQL is not
installed).

Each trial logs STEPS x METRICS points; every point must be in the store exactly once, every run must end
FINISHED under its parent, and no process may print a lock error (or any error) on its way there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayjobs.tracking import spool_file
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.parent_run import parent_tags
from tests.mlflow_servers import APT_LINE, MlflowServer, Postgres, postgres_bin

REPO = Path(__file__).resolve().parents[1]
TRIALS, STEPS, METRICS = 8, 50, 10
PACE_S = 0.01  # between logging steps: most steps go out as their own request, as in a real run
BAD_OUTPUT = ("database is locked", "locked", "Traceback", "ERROR", "refused", "unreachable", "not sent")


def value(trial: int, step: int, k: int) -> float:
    return trial * 1e6 + step * 100 + k + 0.25


def write_trial(uri: str, experiment_id: str, parent_run_id: str, trial: str, out_dir: str, go: str) -> None:
    """One trial's process: wait for the common start, log through `MlflowLoggingCallback`, end the run,
    and print what it measured as JSON."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from rayjobs.tracking.callback import MlflowLoggingCallback

    i = int(trial)
    callback = MlflowLoggingCallback(
        tracking_uri=uri, experiment_id=experiment_id, run_name=f"t{i}", parent_run_id=parent_run_id,
        config={"pref_loss": "sigmoid", "pref_beta": 0.1 * (i + 1), "trial": i},
    )  # fmt: skip
    args, state, control = TrainingArguments(output_dir=out_dir, report_to="none"), TrainerState(), TrainerControl()
    Path(out_dir, "ready").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    start = time.monotonic()
    callback.on_train_begin(args, state, control)
    slowest = 0.0
    for step in range(1, STEPS + 1):
        state.global_step = step
        t = time.perf_counter()
        callback.on_log(args, state, control, logs={f"m{k}": value(i, step, k) for k in range(METRICS)})
        slowest = max(slowest, time.perf_counter() - t)
        time.sleep(PACE_S)
    sender = callback._sender
    callback.finalize_run(Path(out_dir))
    print(json.dumps({"run_id": callback.run_id, "seconds": time.monotonic() - start, "slowest_on_log": slowest,
                      "retried": sender.retried}))  # fmt: skip


def run_trials(uri: str, experiment_id: str, parent_run_id: str, tmp_path: Path) -> list[dict]:
    go = tmp_path / "go"
    procs = []
    for i in range(TRIALS):
        out = tmp_path / f"t{i}"
        out.mkdir()
        log = (out / "process.log").open("w")
        code = "import sys; from tests.test_mlflow_concurrency import write_trial; write_trial(*sys.argv[1:])"
        procs.append((subprocess.Popen(
            [sys.executable, "-c", code, uri, experiment_id, parent_run_id, str(i), str(out), str(go)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        ), log))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"t{i}" / "ready").exists() for i in range(TRIALS)):
            assert all(p.poll() is None for p, _ in procs), "a trial process died before the start"
            assert time.monotonic() < deadline, "trial processes not ready in 300 s"
            time.sleep(0.1)
        go.touch()  # all eight start logging at once
        results = []
        for i, (proc, log) in enumerate(procs):
            stdout, _ = proc.communicate(timeout=300)
            log.close()
            stderr = (tmp_path / f"t{i}" / "process.log").read_text()
            assert proc.returncode == 0, stderr
            bad = [word for word in BAD_OUTPUT if word in stderr + stdout]
            assert not bad, f"trial {i} printed {bad}:\n{stderr}"
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        return results
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            log.close()


def check_store(client: MlflowClient, experiment_id: str, parent_run_id: str, results: list[dict], tmp_path: Path):
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == [f"t{i}" for i in range(TRIALS)]  # one run per trial
    assert {c.info.run_id for c in children} == {r["run_id"] for r in results}
    points = 0
    for child in children:
        i = int(child.info.run_name[1:])
        assert child.info.status == "FINISHED"
        assert child.data.params["trial"] == str(i)
        for k in range(METRICS):
            history = client.get_metric_history(child.info.run_id, f"m{k}")
            assert sorted((m.step, m.value) for m in history) == [
                (step, value(i, step, k)) for step in range(1, STEPS + 1)
            ]
            points += len(history)
        spool = spool_file.SpoolState.load(tmp_path / f"t{i}" / spool_file.SPOOL_NAME)
        assert not spool.unsent() and not spool.dropped
    assert points == TRIALS * STEPS * METRICS
    return points


def parent_run(uri: str, experiment_id: str) -> str:
    """A sweep parent run for the trials to hang under (created directly: the trials' concurrent logging is
    what is tested here; the driver's spooled parent run is tested in test_tracking_sweep.py)."""
    return MlflowClient(uri).create_run(experiment_id, run_name="sweep", tags=parent_tags(None)).info.run_id


def summary(name: str, points: int, results: list[dict]) -> str:
    return (f"\n{name}: {TRIALS} trials x {STEPS} steps x {METRICS} metrics = {points} points, all there once; "
            f"each trial {min(r['seconds'] for r in results):.1f}-{max(r['seconds'] for r in results):.1f} s "
            f"from start to run ended; slowest on_log {1000 * max(r['slowest_on_log'] for r in results):.1f} ms; "
            f"transient store errors retried: {sum(r['retried'] for r in results)}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eight_trials_log_at_once_to_the_default_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "prefsweep-concurrency")
    uri = mlflow_store.tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # the default store
    experiment_id = mlflow_store.ensure_experiment()  # the driver creates and migrates the file first
    parent = parent_run(uri, experiment_id)
    results = run_trials(uri, experiment_id, parent, tmp_path)
    points = check_store(MlflowClient(uri), experiment_id, parent, results, tmp_path)
    print(summary("sqlite", points, results))


@pytest.fixture
def postgres():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin); "
                    f"Debian: {APT_LINE}")  # fmt: skip
    pytest.importorskip("psycopg2", reason="MLflow needs psycopg2 for postgresql:// stores: pip install psycopg2-binary")
    server = Postgres(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eight_trials_log_at_once_to_a_postgres_backed_server(postgres, tmp_path, monkeypatch):
    server = MlflowServer(tmp_path, postgres.uri, workers=4).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "prefsweep-concurrency")
        experiment_id = mlflow_store.ensure_experiment()
        parent = parent_run(server.url, experiment_id)
        results = run_trials(server.url, experiment_id, parent, tmp_path)
        points = check_store(MlflowClient(server.url), experiment_id, parent, results, tmp_path)
        # The points are in PostgreSQL itself, not only behind the server.
        backend = MlflowClient(postgres.uri)
        assert sum(len(backend.get_metric_history(r["run_id"], "m0")) for r in results) == TRIALS * STEPS
        assert "database is locked" not in server.log()
        print(summary("postgres server", points, results))
    finally:
        server.stop()
