"""MLflow recording of one run against a real SQLite store: the store and its params, then a trial's run driven
through the Hugging Face callback hooks with a real `TrainerState` and read back with `MlflowClient`.

What a user relies on: every logged number is in MLflow at its step, secrets never reach the store, the
PNG curves open as images, and a run outlives a worker restart and a refused write. A sweep's parent run
and its leaderboard: `tests/test_tracking_sweep.py`.
"""

from __future__ import annotations

import json
import math
import pickle

import pytest
import yaml
from PIL import Image
from transformers import TrainerControl, TrainerState, TrainingArguments

from rayjobs.tracking import client as mlflow_client
from rayjobs.tracking import params as mlflow_params
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking import tags as mlflow_tags
from rayjobs.tracking.callback import MlflowLoggingCallback
from tests.tracking_helpers import (
    EXPECTED_PNGS,
    SECRET,
    artifact_names,
    download_text,
    make_config,
    run_trial,
)

# ------------------------------------------------------------------------------------- store & params


def test_default_uri_is_absolute_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow_store.experiment_name() == "prefsweep"
    assert mlflow_store.ui_command() == f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///sub/x.db")  # relative: made absolute for workers
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_store.tracking_uri() == "http://127.0.0.1:5000"
    assert mlflow_store.ui_command() == "open http://127.0.0.1:5000"


def test_ensure_experiment_tags_kind_once_and_fixes_existing(store, db_dir):
    exp_id = mlflow_store.ensure_experiment()
    experiment = store.get_experiment(exp_id)
    assert experiment.name == "prefsweep-test_ensure_experiment_tags_kind_once_and_fixes_existing"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # next to the db, not under the cwd; one folder per experiment
    assert experiment.artifact_location == str(db_dir.resolve() / "mlruns" / experiment.name)
    assert mlflow_store.ensure_experiment() == exp_id

    legacy = store.create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in store.get_experiment(legacy).tags
    assert mlflow_store.ensure_experiment("made-elsewhere") == legacy
    assert store.get_experiment(legacy).tags["mlflow.experimentKind"] == "custom_model_development"


def test_flatten_params_nests_stringifies_truncates_and_redacts():
    config = make_config(
        long_value="x" * 7000,
        db_uri="postgresql://alice:pw-42@db.internal/mlflow",
        credentials={"user": "alice", "pass": "pw-43"},
        note=f"pushed with {SECRET}",
        empty={},
    )
    params = mlflow_params.flatten_params(config)
    assert params["ray.num_workers"] == "2"
    assert params["ray.resources_per_worker.CPU"] == "1"
    assert params["ray.use_gpu"] == "False"
    assert params["pref_beta"] == "0.1"
    assert params["report_to"] == "['none']"
    assert params["empty"] == "{}"
    assert len(params["long_value"]) == 6000  # MLflow's MAX_PARAM_VAL_LENGTH
    # secrets by key name, by a whole secret subtree, inside URLs and inline hub tokens
    assert params["hub_token"] == "***"
    assert params["credentials"] == "***"
    assert params["db_uri"] == "postgresql://alice:***@db.internal/mlflow"
    assert params["note"] == "pushed with ***"
    assert not any(s in v for v in params.values() for s in (SECRET, "pw-42", "pw-43"))
    # look-alikes that are not secrets stay readable
    assert params["max_new_tokens"] == "64"
    assert params["pad_token"] == "<pad>"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hub_token", True),
        ("HF_TOKEN", True),
        ("api_key", True),
        ("aws_secret_access_key", True),
        ("dbPassword", True),
        ("max_new_tokens", False),
        ("tokenizer_name", False),
        ("eos_token", False),
        ("keyboard", False),
    ],
)
def test_secret_key_names(key, secret):
    assert mlflow_params.is_secret_key(key) is secret


# ------------------------------------------------------------------------------------------- one run


def test_single_run_records_params_metrics_artifacts_and_tags(store, db_dir, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    config = make_config("ipo", 0.5)
    accuracies = [0.25, 0.5, 0.5, 0.75]
    callback = run_trial(
        tmp_path / "out",
        experiment_id=exp_id,
        run_name="single",
        config=config,
        accuracies=accuracies,
        tags={"team": "prefs"},
    )
    run = store.get_run(callback.run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "single"
    assert "mlflow.parentRunId" not in run.data.tags  # a plain `prefsweep train` run
    assert run.data.tags["prefsweep.kind"] == "run"
    assert run.data.tags["prefsweep.loss"] == "ipo"
    assert run.data.tags["prefsweep.dataset_fingerprint"] == "fp-1234"
    assert run.data.tags["team"] == "prefs"
    assert (
        run.data.tags.get("mlflow.source.git.commit") == mlflow_tags.git_commit()
    )  # None outside a git checkout
    assert run.data.params["pref_loss"] == "ipo"
    assert run.data.params["pref_beta"] == "0.5"
    assert run.data.params["ray.num_workers"] == "2"
    assert run.data.params["hub_token"] == "***"
    assert SECRET not in json.dumps(run.data.params)

    history = store.get_metric_history(callback.run_id, "rewards/accuracies")
    assert [(m.step, m.value) for m in history] == list(enumerate(accuracies, start=1))
    eval_history = store.get_metric_history(callback.run_id, "eval_rewards/accuracies")
    assert [(m.step, m.value) for m in eval_history] == [(2, 0.5), (4, 0.75)]
    losses = store.get_metric_history(callback.run_id, "loss")
    for m in losses:
        assert m.value == pytest.approx(0.7 - 0.05 * m.step)
    assert {"learning_rate", "grad_norm", "rewards/chosen", "epoch", "eval_loss"} <= set(run.data.metrics)

    artifacts = db_dir / "mlruns" / mlflow_store.experiment_name() / callback.run_id / "artifacts"
    assert (artifacts / "training_loss.png").is_file()  # absolute: a worker in another cwd writes here
    names = artifact_names(store, callback.run_id)
    assert EXPECTED_PNGS | {"resolved_config.yaml", "trainer_state.json"} <= names
    assert "model" not in names  # log_model defaults to off
    for png in EXPECTED_PNGS:
        with Image.open(store.download_artifacts(callback.run_id, png, str(tmp_path))) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    resolved = download_text(store, callback.run_id, "resolved_config.yaml", tmp_path)
    assert SECRET not in resolved
    assert yaml.safe_load(resolved) == {**config, "hub_token": "***"}
    state = json.loads(download_text(store, callback.run_id, "trainer_state.json", tmp_path))
    assert [e["rewards/accuracies"] for e in state["log_history"] if "rewards/accuracies" in e] == accuracies


def test_only_finite_numbers_are_logged(store, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    callback = MlflowLoggingCallback(
        tracking_uri=mlflow_store.tracking_uri(), experiment_id=exp_id, run_name="odd", config=make_config()
    )
    args, state, control = TrainingArguments(output_dir=str(tmp_path)), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    state.global_step = 3
    logs = {"loss": 0.5, "grad_norm": math.nan, "x": math.inf, "flag": True, "msg": "hi", "n": 7}
    callback.on_log(args, state, control, logs=logs)
    callback.finalize_run(tmp_path)  # an output dir with no files: config is still recorded
    run = store.get_run(callback.run_id)
    assert run.data.metrics == {"loss": 0.5, "n": 7.0}
    assert artifact_names(store, callback.run_id) == {"resolved_config.yaml"}


def test_log_model_uploads_weights_not_checkpoints(store, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"old")
    (out / "adapter_model.safetensors").write_bytes(b"\x00weights")
    (out / "adapter_config.json").write_text("{}")
    (out / "tokenizer.json").write_text("{}")
    callback = run_trial(
        out,
        experiment_id=exp_id,
        run_name="with-model",
        config=make_config(),
        accuracies=[0.5, 1.0],
        log_model=True,
    )
    assert artifact_names(store, callback.run_id, "model") == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
    }
    assert "trainer_state.json" not in artifact_names(store, callback.run_id, "model")


def test_other_ranks_log_nothing_and_the_callback_pickles(store, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    callback = run_trial(
        tmp_path / "rank1",
        experiment_id=exp_id,
        run_name="r1",
        config=make_config(),
        accuracies=[0.5],
        rank=1,
    )
    assert callback.run_id is None
    assert store.search_runs([exp_id]) == []

    fresh = pickle.loads(pickle.dumps(callback))  # what Ray does to ship it to a worker
    assert fresh.run_name == "r1" and fresh.config == make_config()
    started = run_trial(
        tmp_path / "r0",
        experiment_id=exp_id,
        run_name="r0",
        config=make_config(),
        accuracies=[0.5],
        finalize=False,
    )
    assert pickle.loads(pickle.dumps(started)).run_id == started.run_id  # picklable mid-run too
    started.finalize_run(tmp_path / "r0", status="FAILED")
    assert store.get_run(started.run_id).info.status == "FAILED"


def test_a_run_created_on_the_driver_survives_a_worker_restart(store, tmp_path):
    """`prefsweep train` through Ray: the driver creates the run, each worker group gets a pickled copy;
    the first group dies mid-run (no finalize), the restarted one attaches to the same run and ends it."""
    exp_id = mlflow_store.ensure_experiment()
    driver = MlflowLoggingCallback(
        tracking_uri=mlflow_store.tracking_uri(), experiment_id=exp_id, run_name="plain", config=make_config()
    )
    run_id = driver.ensure_run()
    shipped = pickle.dumps(driver)
    args, control = TrainingArguments(output_dir=str(tmp_path)), TrainerControl()
    for attempt, steps in enumerate([(1, 2), (1, 2, 3)]):
        worker = pickle.loads(shipped)
        state = TrainerState()
        worker.on_train_begin(args, state, control)
        assert worker.run_id == run_id
        for step in steps:
            state.global_step = step
            worker.on_log(args, state, control, logs={"rewards/accuracies": 0.5 * attempt})
    worker.finalize_run(tmp_path)
    assert [r.info.run_id for r in store.search_runs([exp_id])] == [run_id]
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["pref_loss"] == "sigmoid"
    history = store.get_metric_history(run_id, "rewards/accuracies")
    # one value per step, the first logged: the restarted group's re-run of steps 1-2 is skipped
    assert sorted((m.step, m.value) for m in history) == [(1, 0.0), (2, 0.0), (3, 0.5)]


def test_a_refused_metric_write_warns_and_is_counted_not_raised(store, tmp_path, caplog):
    """Training must outlive a tracking hiccup: here the run is deleted under the callback, MLflow refuses
    the step's batch for good (not an outage: no retry), the sender warns and counts it, and the count is
    tagged once the run is back."""
    exp_id = mlflow_store.ensure_experiment()
    callback = MlflowLoggingCallback(
        tracking_uri=mlflow_store.tracking_uri(), experiment_id=exp_id, run_name="hiccup", config=make_config()
    )
    args, state, control = TrainingArguments(output_dir=str(tmp_path)), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    store.delete_run(callback.run_id)
    state.global_step = 1
    callback.on_log(args, state, control, logs={"loss": 0.69})
    assert callback.flush(timeout_s=10)
    assert "MLflow refused the metrics of step 1" in caplog.text
    assert callback.dropped_log_batches == 1
    store.restore_run(callback.run_id)
    state.global_step = 2
    callback.on_log(args, state, control, logs={"loss": 0.5})
    callback.finalize_run(tmp_path)
    run = store.get_run(callback.run_id)
    assert run.data.tags["prefsweep.dropped_log_batches"] == "1"
    assert [(m.step, m.value) for m in store.get_metric_history(callback.run_id, "loss")] == [(2, 0.5)]
    assert run.info.status == "FINISHED"


def test_only_transient_store_errors_are_retried(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    monkeypatch.setattr(mlflow_client.time, "sleep", lambda s: None)
    calls = []

    def flaky(code, failures):
        calls.append(code)
        if len(calls) <= failures:
            raise MlflowException("locked", error_code=code)
        return "ok"

    assert mlflow_client.with_retries(flaky, TEMPORARILY_UNAVAILABLE, 2) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException):
        mlflow_client.with_retries(flaky, INVALID_PARAMETER_VALUE, 1)
    assert len(calls) == 1
