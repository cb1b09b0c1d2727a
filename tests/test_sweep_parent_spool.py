"""The sweep driver's parent run goes through a spool (`rayjobs.sweep_parent`): the driver starts, runs and
ends while the MLflow server is down, and what it spooled lands once, as one parent run whose children are
the sweep's trials.

The driver-side code is driven directly (no Ray): `SweepParent` as `rayjobs.sweep.run` calls it, and two
trials through the real `MlflowLoggingCallback` with the tags `rayjobs.train.tracking_args` gives them,
against a real `mlflow server` on 127.0.0.1 that is stopped and started again on the same port and store
(tests/mlflow_servers.py):

- down when the sweep starts, up again mid-sweep (issue 13 names a 60 s outage; CI uses
  PREFSWEEP_PARENT_OUTAGE_S, default 5 s, of the same shape): the first trial starts, logs and ends in the
  outage (its run is created by the driver's end, which sends what trials left in their spools), the second
  starts once the server is back;
- down from the start to past the end: the driver exits without waiting past its flush timeout and prints
  the `prefsweep mlflow-sync` command, which delivers everything once, however often it is run.

Both check: one parent run, every trial its child, the spec as params and artifact, the leaderboard ranked
from the store (the trials' finals are not given: they come from the children's metric history), the best
metric, status FINISHED, and every trial point in the store exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from transformers import TrainerControl, TrainerState, TrainingArguments

from rayjobs.sweep_parent import SweepParent
from rayjobs.sweep_state import read_parent_run
from rayjobs.tracking import spool as mlflow_spool
from rayjobs.tracking import spool_file
from rayjobs.tracking import sync as mlflow_sync
from rayjobs.tracking.callback import MlflowLoggingCallback
from rayjobs.tracking.leaderboard import TrialSummary
from rayjobs.tracking.params import param_key
from rayjobs.tracking.tags import TAG_KIND, TAG_SWEEP_ID
from tests.mlflow_servers import MlflowServer, free_port

EXPERIMENT = "parent-outage"
METRIC = "eval_rewards/accuracies"
SPEC = SimpleNamespace(  # what SweepParent reads of a SweepSpec
    name="outage-sweep", path=None,
    source={"name": "outage-sweep", "base": {"pref_loss": "sigmoid"}, "search_space": {"pref_beta": {"grid": [0.1, 0.3]}}},
)  # fmt: skip
# The two trials' eval accuracy at steps 1..6 (and loss 1/step): t1 ends higher, so it is the best.
CURVES = {"t0": [0.25, 0.5, 0.5, 0.5, 0.5, 0.5], "t1": [0.5, 0.5, 0.75, 0.75, 1.0, 0.75]}
OUTAGE_S = float(os.environ.get("PREFSWEEP_PARENT_OUTAGE_S", "5"))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A server on a fixed port, not started: the test starts and stops it."""
    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'server.db'}", port=free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    monkeypatch.setattr(mlflow_spool, "BACKOFF_S", (0.2, 0.5, 1.0))  # retry often: the test waits on it
    try:
        yield server
    finally:
        server.stop()


class Trial:
    """One trial's MLflow callback, called as the Trainer calls it on rank 0."""

    def __init__(self, name: str, out: Path, url: str, parent: SweepParent):
        self.name, self.out = name, out
        self.callback = MlflowLoggingCallback(
            tracking_uri=url, experiment_id=parent.record["experiment_id"], experiment_name=EXPERIMENT,
            run_name=name, parent_run_id=parent.run_id, config={"pref_loss": "sigmoid", "trial": name},
            tags={TAG_SWEEP_ID: parent.sweep_id}, flush_timeout_s=60,
        )  # fmt: skip
        self.args = TrainingArguments(output_dir=str(out), report_to="none")
        self.state, self.control = TrainerState(), TrainerControl()
        self.callback.on_train_begin(self.args, self.state, self.control)

    def log(self, steps: range) -> None:
        for step in steps:
            self.state.global_step = step
            logs = {"loss": 1 / step, METRIC: CURVES[self.name][step - 1]}
            self.callback.on_log(self.args, self.state, self.control, logs=logs)

    def end(self, flush_timeout_s: float = 60) -> None:
        self.callback.flush_timeout_s = flush_timeout_s
        self.callback.finalize_run(self.out)

    def summary(self) -> TrialSummary:
        """As `rayjobs.sweep.trial_summaries` makes it, minus the final value: the store's curve gives it."""
        return TrialSummary(self.name, "sigmoid", 0.1, None, 0.0, None, None, config={"trial": self.name})


def check_store(url: str, sweep_id: str, tmp: Path) -> tuple[str, int]:
    """One FINISHED parent with the spec, leaderboard and best metric; both trials its children, each
    point exactly once. Returns (parent run id, points)."""
    client = MlflowClient(url)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'")
    parents = [r for r in runs if r.data.tags[TAG_KIND] == "sweep"]
    assert len(parents) == 1 and len(client.search_runs([experiment_id])) == 3, [r.info.run_name for r in runs]
    parent = parents[0]
    parent_id = parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.info.run_name == "outage-sweep"
    assert parent.data.params["search_space.pref_beta.grid"] == "[0.1, 0.3]"
    assert parent.data.tags["prefsweep.best_trial"] == "t1"
    assert parent.data.metrics[param_key(f"best/{METRIC}")] == 0.75  # t1's last value, not its best (1.0)
    children = {r.info.run_name: r for r in runs if r.data.tags[TAG_KIND] == "trial"}
    assert sorted(children) == ["t0", "t1"]
    assert all(r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent_id for r in children.values())
    assert parent.data.tags["prefsweep.best_run_id"] == children["t1"].info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"sweep_spec.yaml", "leaderboard.csv", "leaderboard.md", "best_config.yaml", "metric_curves.png"} <= artifacts
    board = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(parent_id, "leaderboard.csv", str(tmp)))
                                            .read_text())))  # fmt: skip
    assert [row["trial"] for row in board] == ["t1", "t0"]
    points = 0
    for name, run in children.items():
        assert run.info.status == "FINISHED"
        for key, values in (("loss", [1 / s for s in range(1, 7)]), (METRIC, CURVES[name])):
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(history) == list(enumerate(values, start=1)), (name, key, history)
            points += len(history)
    return parent_id, points


@pytest.mark.timeout(600)
def test_the_driver_starts_in_an_outage_and_the_parent_lands_once(store, tmp_path):
    exp_path, out = tmp_path / "ray" / "outage-sweep", tmp_path / "saves"
    start = time.monotonic()
    parent = SweepParent.start(SPEC, exp_path=str(exp_path), output_dir=out, experiment_id=None, tags={})
    assert time.monotonic() - start < mlflow_spool.OPEN_WAIT_S + 3  # bounded: the server is not there
    assert parent.run_id is None
    assert read_parent_run(str(exp_path)) == {"sweep_id": parent.sweep_id, "run_id": None, "experiment_id": None,
                                              "tracking_uri": store.url}  # fmt: skip
    t0 = Trial("t0", out / "t0", store.url, parent)  # started, with no parent run id to give it
    t0.log(range(1, 7))
    t0.end(flush_timeout_s=0.5)  # ended in the outage: its points wait in its spool
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - start)))
    down_s = time.monotonic() - start
    store.start()
    t1 = Trial("t1", out / "t1", store.url, parent)  # started with the server back, the parent maybe not yet
    t1.log(range(1, 7))
    t1.end()
    board = parent.finish([t0.summary(), t1.summary()], metric=METRIC, mode="max")
    assert parent.delivered
    assert [line.split()[1] for line in board.splitlines()[3:]] == ["t1", "t0"]  # ranked from the store

    parent_id, points = check_store(store.url, parent.sweep_id, tmp_path)
    assert read_parent_run(str(exp_path))["run_id"] == parent_id  # what --resume reattaches to
    assert not spool_file.SpoolState.load(exp_path / spool_file.SPOOL_NAME).unsent()
    print(f"\nserver down for the first {down_s:.1f} s of the sweep; 1 parent run, 2 children, {points} points, "
          "none lost or doubled")  # fmt: skip


@pytest.mark.timeout(600)
def test_down_past_the_end_the_printed_sync_command_delivers_once(store, tmp_path, capsys):
    exp_path, out = tmp_path / "ray" / "outage-sweep", tmp_path / "saves"
    parent = SweepParent.start(SPEC, exp_path=str(exp_path), output_dir=out, experiment_id=None, tags={})
    trials = []
    for name in ("t0", "t1"):
        trial = Trial(name, out / name, store.url, parent)
        trial.log(range(1, 7))
        trial.end(flush_timeout_s=0.5)
        trials.append(trial)
    start = time.monotonic()
    board = parent.finish([t.summary() for t in trials], metric=METRIC, mode="max", timeout_s=2)
    # the timeout and a second per step, a request in flight (10 s cap), slack
    assert time.monotonic() - start < 2 + 3 + 10 + 3
    assert not parent.delivered and parent.run_id is None
    assert [line.split()[1] for line in board.splitlines()[3:]] == ["t0", "t1"]  # no finals yet: name order
    err = capsys.readouterr().err
    command = f"prefsweep mlflow-sync {out} {exp_path}"
    assert command in err and "spooled" in err, err

    store.start()
    argv = shlex.split(command)[2:]
    assert mlflow_sync.main(argv) == 0
    _, points = check_store(store.url, parent.sweep_id, tmp_path)
    assert mlflow_sync.main(argv) == 0  # again: nothing doubled, no second run
    assert check_store(store.url, parent.sweep_id, tmp_path)[1] == points == 2 * 2 * 6
    assert json.loads((exp_path / "prefsweep_parent_run.json").read_text())["sweep_id"] == parent.sweep_id


def test_resume_reopens_the_killed_parent_run_and_a_new_sweep_gets_its_own(tmp_path, monkeypatch):
    """Interrupted (the parent ends KILLED), then `--resume`: the same spool and run go on and end FINISHED,
    the KILLED end delivered before them; a sweep started again without --resume is a new parent run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp_path, out = str(tmp_path / "ray" / "outage-sweep"), tmp_path / "saves"
    first = SweepParent.start(SPEC, exp_path=exp_path, output_dir=out, experiment_id=None, tags={})
    first.finish([], metric=METRIC, mode="max", status="KILLED")
    assert first.delivered and first.run_id
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "KILLED"

    resumed = SweepParent.start(SPEC, exp_path=exp_path, output_dir=out, experiment_id=None, tags={}, resume=True)
    assert (resumed.sweep_id, resumed.run_id) == (first.sweep_id, first.run_id)
    resumed.finish([], metric=METRIC, mode="max")
    assert resumed.delivered
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert [(r.info.run_id, r.info.status) for r in client.search_runs([experiment_id])] == [(first.run_id, "FINISHED")]
    ops = [i["op"] for i in spool_file.SpoolState.load(Path(exp_path) / spool_file.SPOOL_NAME).items]
    assert ops == ["open", "artifacts", "leaderboard", "end"] * 2

    fresh = SweepParent.start(SPEC, exp_path=exp_path, output_dir=out, experiment_id=None, tags={})
    fresh.finish([], metric=METRIC, mode="max")
    assert fresh.sweep_id != first.sweep_id and fresh.run_id not in (None, first.run_id)
    assert len(client.search_runs([experiment_id])) == 2


def test_a_reloaded_spool_keeps_every_item_kind(tmp_path):
    """`mlflow-sync` and a resumed sender read the spool file back: a trial's `outputs` item and a parent's
    `leaderboard` item must come back with it, in order (a kind missing from ITEM_OPS was silently skipped)."""
    spool = spool_file.Spool.open(tmp_path, {"run_name": "r", "spool_id": "s1"})
    for record in ({"op": "metrics", "metrics": [["loss", 0.5, 1, 1]]}, {"op": "outputs", "table": None},
                   {"op": "leaderboard", "trials": []}, {"op": "end", "status": "FINISHED"}):
        spool.append(record)
    spool.close()
    state = spool_file.SpoolState.load(tmp_path / spool_file.SPOOL_NAME)
    assert [(i["seq"], i["op"]) for i in state.unsent()] == [
        (1, "open"), (2, "metrics"), (3, "outputs"), (4, "leaderboard"), (5, "end")
    ]
    assert state.header["spool_id"] == "s1"  # the id the caller chose (a sweep's), not a random one
