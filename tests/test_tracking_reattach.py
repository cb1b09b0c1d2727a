"""A trial resumed where its output dir (and so its MLflow spool) is gone -- another node, a fresh working
dir, state only in a bucket -- reattaches to its child run by name and sends no step twice: MLflow keeps
one value per metric and step, the first logged (the killed attempt's), and gets the steps after it."""

from __future__ import annotations

from mlflow import MlflowClient
from transformers import TrainerControl, TrainerState, TrainingArguments

from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.callback import MlflowLoggingCallback


def attempt(uri: str, experiment_id: str, parent: str, out, steps: range, scale: float) -> str:
    """One attempt of trial `t` logging loss = scale / step at `steps`; its run id."""
    callback = MlflowLoggingCallback(tracking_uri=uri, experiment_id=experiment_id, run_name="t",
                                     parent_run_id=parent, config={"lr": 1})
    args, state, control = TrainingArguments(output_dir=str(out), report_to="none"), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in steps:
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": scale / step})
    callback.finalize_run(out)
    return callback.run_id


def test_a_fresh_spool_reattaches_and_keeps_the_first_value_per_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = mlflow_store.ensure_experiment("reattach", uri=uri)
    client = MlflowClient(uri)
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    first = attempt(uri, experiment_id, parent, tmp_path / "node-a", range(1, 5), scale=1.0)
    again = attempt(uri, experiment_id, parent, tmp_path / "node-b", range(3, 7), scale=10.0)  # from a checkpoint at 2
    assert again == first
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [c.info.run_name for c in children] == ["t"]
    history = [(m.step, m.value) for m in client.get_metric_history(first, "loss")]
    assert history == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 2.0), (6, 10 / 6)]
