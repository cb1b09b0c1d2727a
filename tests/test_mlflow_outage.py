"""The tracking server goes away; training must not notice, and no metric point may be lost or doubled.

Real `mlflow server` processes on 127.0.0.1 and real training runs of the tiny model in this process:

- a 60 s outage mid-run (the server is stopped, then started again on the same port and store): no step
  waits on MLflow, the log warns once when it starts and once when the backlog is replayed, and afterwards
  the server holds every point of `trainer_state.json`'s log history exactly once;
- a server that never comes back during the run: training finishes and writes its results, the unsent
  part stays in the spool, the log names `prefsweep mlflow-sync`, and syncing to a server started later
  creates the run and replays everything exactly once, however often it is repeated;
- a server that accepts connections and never answers (a hung process): logging steps stay fast and the
  end of the run waits no longer than its flush timeout.
"""

from __future__ import annotations

import collections
import json
import math
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from rayjobs.tracking import spool as mlflow_spool
from rayjobs.tracking import spool_file
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking import sync as mlflow_sync
from rayjobs.tracking.callback import MlflowLoggingCallback
from tests.mlflow_servers import MlflowServer, free_port
from trainer.config import load_config
from trainer.workflow import run_training

REPO = Path(__file__).resolve().parents[1]
OUTAGE_S = 60.0


def training_config(model: Path, data: Path, out: Path, **overrides):
    raw = {
        "model_name_or_path": str(model), "stage": "dpo", "do_train": True, "do_eval": True,
        "finetuning_type": "full", "dataset": "pairs", "dataset_dir": str(data), "template": "default",
        "cutoff_len": 64, "val_size": 0.25, "pref_beta": 0.1, "output_dir": str(out),
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 1e-3,
        "lr_scheduler_type": "constant", "max_steps": 20, "logging_steps": 1, "eval_strategy": "steps",
        "eval_steps": 10, "save_strategy": "no", "report_to": "none", "plot_loss": True, "seed": 7,
        "use_ray": False, "disable_tqdm": True,
    }  # fmt: skip
    raw.update(overrides)
    return load_config(raw)


def expected_points(output_dir: Path) -> collections.Counter:
    """(key, step, value) of every number the trainer logged, from its own `trainer_state.json`: the first
    value of each key at each step (MLflow gets one value per key and step, rayjobs.tracking.callback; the
    train and eval logs of one step both carry `epoch`)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    first: dict[tuple[str, int], float] = {}
    for entry in state["log_history"]:
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    first.setdefault((key, entry["step"]), float(value))
    return collections.Counter((key, step, value) for (key, step), value in first.items())


def server_points(client: MlflowClient, run_id: str) -> collections.Counter:
    points = collections.Counter()
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            points[(m.key, m.step, m.value)] += 1
    return points


def assert_exactly_once(client: MlflowClient, run_id: str, output_dir: Path) -> int:
    expected, got = expected_points(output_dir), server_points(client, run_id)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, f"missing {sorted(missing)[:5]}..., extra {sorted(extra)[:5]}..."
    return sum(got.values())


class TimedMlflowCallback(MlflowLoggingCallback):
    """The real callback, timing the part that runs in the training loop."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.on_log_seconds: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        start = time.perf_counter()
        super().on_log(args, state, control, logs=logs, **kwargs)
        self.on_log_seconds.append(time.perf_counter() - start)


class OutageDuringTraining(TrainerCallback):
    """Paces training (a short sleep per step, as a bigger model would take) and, from step `at_step`,
    has the server down for `seconds`; stops training `steps_after` steps after the server is back, so
    the run spans the whole outage on any machine."""

    def __init__(self, server: MlflowServer, *, at_step: int, seconds: float, steps_after: int, pace_s: float):
        self.server, self.at_step, self.seconds = server, at_step, seconds
        self.steps_after, self.pace_s = steps_after, pace_s
        self.step_times: list[float] = []
        self.down_at = self.up_at = None
        self.back_step: int | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _outage(self) -> None:
        try:
            self.server.stop()
            self.down_at = time.monotonic()
            time.sleep(self.seconds)
            self.server.start()
            self.up_at = time.monotonic()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.monotonic())
        if state.global_step == self.at_step:
            self._thread = threading.Thread(target=self._outage, daemon=True)
            self._thread.start()
        if self.up_at is not None and self.back_step is None:
            self.back_step = state.global_step
        if self.back_step is not None and state.global_step >= self.back_step + self.steps_after:
            control.should_training_stop = True
        if self.error is not None:
            raise self.error
        time.sleep(self.pace_s)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_60s_outage_mid_training_loses_and_doubles_no_point(tiny_model, data_dir, tmp_path, caplog):
    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'server.db'}").start()
    try:
        caplog.set_level("WARNING", logger="prefsweep.mlflow")
        experiment_id = mlflow_store.ensure_experiment("prefsweep-outage", uri=server.url)
        cfg = training_config(tiny_model, data_dir, tmp_path / "run", max_steps=5000, eval_steps=25)
        callback = TimedMlflowCallback(
            tracking_uri=server.url, experiment_id=experiment_id, run_name="outage", config=cfg.to_flat_dict()
        )
        outage = OutageDuringTraining(server, at_step=5, seconds=OUTAGE_S, steps_after=20, pace_s=0.2)
        start = time.monotonic()
        result = run_training(cfg, callbacks=[callback, outage])
        trained_s = time.monotonic() - start
        callback.finalize_run(cfg.output_dir, result.dataset_fingerprint)

        assert outage.error is None and outage.back_step is not None
        down_s = outage.up_at - outage.down_at
        assert down_s >= OUTAGE_S
        # No stall: steps kept their pace through the outage (median step time as with the server up; this
        # is robust to a loaded machine, where any single step may be slow), and the callback's own time
        # in the training loop stayed in milliseconds.
        during, outside = [], []
        for a, b in zip(outage.step_times, outage.step_times[1:]):
            (during if outage.down_at <= a and b <= outage.up_at else outside).append(b - a)
        assert len(during) > 0.5 * down_s / statistics.median(outside)  # the steps went on, at about their pace
        assert statistics.median(during) < 1.5 * statistics.median(outside) + 0.05
        slowest_log, total_log = max(callback.on_log_seconds), sum(callback.on_log_seconds)
        assert slowest_log < 1.0 and total_log < 0.02 * trained_s, (slowest_log, total_log)
        assert trained_s < down_s + 120

        warnings_ = [r.getMessage() for r in caplog.records if r.name == "prefsweep.mlflow"]
        assert sum("is unreachable" in w for w in warnings_) == 1, warnings_
        assert sum("MLflow is back after" in w for w in warnings_) == 1, warnings_

        client = MlflowClient(server.url)
        run = client.get_run(callback.run_id)
        assert run.info.status == "FINISHED"
        points = assert_exactly_once(client, callback.run_id, cfg.output_dir)
        assert not spool_file.SpoolState.load(cfg.output_dir / spool_file.SPOOL_NAME).unsent()
        assert {"trainer_state.json", "resolved_config.yaml", "training_loss.png"} <= {
            a.path for a in client.list_artifacts(callback.run_id)
        }
        print(f"\noutage {down_s:.1f} s over {len(during)} steps; training {trained_s:.1f} s; median step "
              f"{statistics.median(during):.3f} s down vs {statistics.median(outside):.3f} s up; on_log max "
              f"{1000 * slowest_log:.1f} ms, total {total_log:.2f} s; {points} points on the server, none "
              "missing, none doubled")  # fmt: skip
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_server_gone_for_good_leaves_a_spool_that_syncs_exactly_once(tiny_model, data_dir, tmp_path, caplog):
    """Down from the start: the driver could not even resolve the experiment (id None, name given)."""
    caplog.set_level("WARNING", logger="prefsweep.mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = training_config(tiny_model, data_dir, tmp_path / "run")
    callback = MlflowLoggingCallback(
        tracking_uri=url, experiment_id=None, experiment_name="prefsweep-later", run_name="offline",
        config=cfg.to_flat_dict(), flush_timeout_s=3,
    )  # fmt: skip
    start = time.monotonic()
    result = run_training(cfg, callbacks=[callback])
    callback.finalize_run(cfg.output_dir, result.dataset_fingerprint)
    assert time.monotonic() - start < 120
    assert callback.run_id is None
    out = cfg.output_dir
    assert json.loads((out / "all_results.json").read_text())["train_loss"] > 0
    spool = out / spool_file.SPOOL_NAME
    unsent = spool_file.SpoolState.load(spool).unsent()
    assert [i["op"] for i in unsent][:2] == ["open", "metrics"] and unsent[-1] == {**unsent[-1], "op": "end"}
    assert f"prefsweep mlflow-sync {out}" in caplog.text

    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'server.db'}", port=port).start()
    try:
        assert mlflow_sync.main([str(out)]) == 0
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("prefsweep-later")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == "offline" and run.info.status == "FINISHED"
        assert run.data.params["pref_loss"] == "sigmoid"
        assert run.data.tags["prefsweep.dataset_fingerprint"] == result.dataset_fingerprint
        assert {"trainer_state.json", "resolved_config.yaml", "training_loss.png"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        points = assert_exactly_once(client, run.info.run_id, out)

        # Again, through the CLI entry: nothing left, nothing doubled.
        again = subprocess.run([sys.executable, "-m", "rayjobs.tracking.sync", str(out)], cwd=REPO,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
        # With the spool's sent markers lost (a crash before they reached the disk): the history is
        # read first, so still nothing is doubled.
        lines = spool.read_text().splitlines()
        spool.write_text("".join(line + "\n" for line in lines if '"op":"sent"' not in line))
        assert mlflow_sync.main([str(out)]) == 0
        assert assert_exactly_once(client, run.info.run_id, out) == points
        assert len(client.search_runs([experiment.experiment_id])) == 1
        print(f"\nsynced {points} points into a run created after training; 3 syncs, none doubled")
    finally:
        server.stop()


def test_a_hung_server_neither_slows_steps_nor_holds_the_end(tmp_path, monkeypatch, caplog):
    """A server that accepts connections and never answers: every request hits the HTTP timeout."""
    caplog.set_level("WARNING", logger="prefsweep.mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        callback = MlflowLoggingCallback(
            tracking_uri=url, experiment_id="1", run_name="hung", config={"pref_loss": "sigmoid"},
            flush_timeout_s=2,
        )  # fmt: skip
        args, state, control = TrainingArguments(output_dir=str(tmp_path)), TrainerState(), TrainerControl()
        callback.on_train_begin(args, state, control)
        slowest = 0.0
        for step in range(1, 201):
            state.global_step = step
            start = time.perf_counter()
            callback.on_log(args, state, control, logs={"loss": 1 / step, "grad_norm": 0.5})
            slowest = max(slowest, time.perf_counter() - start)
        start = time.monotonic()
        callback.finalize_run(tmp_path)
        ended_s = time.monotonic() - start
    assert slowest < 0.25, f"on_log took {slowest:.3f} s"
    assert ended_s < 2 + 2 + 1  # flush timeout, plus the request in flight (1 s timeout), plus slack
    state_ = spool_file.SpoolState.load(tmp_path / spool_file.SPOOL_NAME)
    assert sum(len(i.get("metrics", ())) for i in state_.unsent()) == 400
    assert "is unreachable" in caplog.text and "prefsweep mlflow-sync" in caplog.text


def drive(callback: MlflowLoggingCallback, out: Path, steps: range, finalize: bool = True) -> None:
    """The callback hooks as the Trainer calls them, for `steps` (2 metrics a step)."""
    args, state, control = TrainingArguments(output_dir=str(out), report_to="none"), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in steps:
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": 1 / step, "rewards/accuracies": step % 2})
    if finalize:
        callback.finalize_run(out)


def test_a_backlog_beyond_memory_is_read_back_from_the_spool(tmp_path, monkeypatch, caplog):
    """The store fails (transiently) while 60 steps are logged and only 5 items fit in memory: the rest is
    read back from the spool file when the store answers again; one warning each way, nothing lost."""
    caplog.set_level("WARNING", logger="prefsweep.mlflow")
    monkeypatch.setattr(mlflow_spool, "MAX_PENDING", 5)
    monkeypatch.setattr(mlflow_spool, "BACKOFF_S", (0.05,))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = mlflow_store.ensure_experiment("backlog", uri=uri)
    callback = MlflowLoggingCallback(tracking_uri=uri, experiment_id=experiment_id, run_name="b", config={})
    drive(callback, tmp_path, range(1, 2), finalize=False)
    assert callback.flush(timeout_s=10)  # step 1 is in; then the store goes away
    gate = threading.Event()
    deliver = callback._sender.delivery.deliver

    def failing_until_gate(items):
        if not gate.is_set():
            raise mlflow_spool.MlflowException("store away", error_code="TEMPORARILY_UNAVAILABLE")
        deliver(items)

    monkeypatch.setattr(callback._sender.delivery, "deliver", failing_until_gate)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState(), TrainerControl()
    for step in range(2, 61):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": 1 / step, "rewards/accuracies": step % 2})
    time.sleep(0.3)
    assert len(callback._sender._pending) <= 5 and callback._sender._spilled
    gate.set()
    callback.finalize_run(tmp_path)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(callback.run_id, "loss")] == [
        (s, 1 / s) for s in range(1, 61)
    ]
    assert client.get_run(callback.run_id).info.status == "FINISHED"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("replayed 118 metric points" in m for m in messages) == 1, messages  # steps 2..60, 2 each


def test_unsent_spools_of_earlier_runs_are_kept_and_synced(tmp_path, caplog):
    """Two runs into one output dir while the server is down: the first run's spool is moved aside, not
    overwritten, and one `mlflow-sync` (to the store's new address) replays both."""
    caplog.set_level("WARNING", logger="prefsweep.mlflow")
    dead = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    for name, steps in (("first", range(1, 4)), ("second", range(1, 6))):
        callback = MlflowLoggingCallback(tracking_uri=dead, experiment_id=None, experiment_name="moved",
                                         run_name=name, config={"n": len(steps)}, flush_timeout_s=0.2)  # fmt: skip
        drive(callback, out, steps)
    assert sorted(p.name for p in out.glob("mlflow_spool*.jsonl")) == ["mlflow_spool.1.jsonl", "mlflow_spool.jsonl"]
    assert "moved to" in caplog.text
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert mlflow_sync.main([str(tmp_path), "--tracking-uri", uri, "--timeout", "5"]) == 0
    assert mlflow_sync.main([str(tmp_path), "--tracking-uri", uri, "--timeout", "5"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("moved").experiment_id])
    assert sorted((r.info.run_name, r.info.status, r.data.params["n"]) for r in runs) == [
        ("first", "FINISHED", "3"), ("second", "FINISHED", "5")
    ]
    for run in runs:
        n = int(run.data.params["n"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, n + 1))


def test_the_driver_does_not_wait_for_a_dead_server(tmp_path, monkeypatch, caplog):
    """`try_ensure_experiment()` and `ensure_run()` on the driver: a dead server is reported, not retried
    for minutes, and the experiment and run are left for the first worker to resolve and create."""
    caplog.set_level("WARNING", logger="prefsweep.mlflow")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # the defaults retry for minutes
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    start = time.monotonic()
    assert mlflow_store.try_ensure_experiment("x") is None
    driver = MlflowLoggingCallback(tracking_uri=dead, experiment_id=None, experiment_name="x", run_name="d", config={})
    assert driver.ensure_run() is None
    assert time.monotonic() - start < 5
    assert "unreachable" in caplog.text
    driver.finalize_run(tmp_path, status="FAILED")  # nothing to end, nothing raised
