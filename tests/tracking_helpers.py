"""What the MLflow tracking tests share: a trial's run driven through the Hugging Face callback hooks
with a real `TrainerState` (`run_trial`), a sweep's parent run through the driver's own spooled path
(`start_parent`), and the spec and configs they record."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml
from mlflow import MlflowClient
from transformers import TrainerControl, TrainerState, TrainingArguments

from rayjobs.sweep_parent import SweepParent
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.callback import MlflowLoggingCallback
from trainer.plotting import plot_curves

SECRET = "hf_q8Zr2LmN5vXc7TyW3pKd9sJf4HbG6aE1"
EXPECTED_PNGS = {"training_loss.png", "training_rewards_accuracies.png", "training_eval_loss.png"}


def make_config(loss: str = "sigmoid", beta: float = 0.1, **extra) -> dict:
    return {
        "model_name_or_path": "models/tiny-llama",
        "stage": "dpo",
        "pref_loss": loss,
        "pref_beta": beta,
        "pref_ftx": 0.0,
        "learning_rate": 5.0e-5,
        "max_new_tokens": 64,
        "pad_token": "<pad>",
        "hub_token": SECRET,
        "report_to": ["none"],
        "ray": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        **extra,
    }


def log_sequence(accuracies: list[float], eval_every: int = 2) -> list[tuple[int, dict]]:
    """(global_step, logs) as the Trainer emits them: train logs each step, eval logs every `eval_every`."""
    seq = []
    for step, acc in enumerate(accuracies, start=1):
        seq.append(
            (
                step,
                {
                    "loss": 0.7 - 0.05 * step,
                    "learning_rate": 5e-5,
                    "grad_norm": 1.5,
                    "rewards/chosen": 0.01 * step,
                    "rewards/accuracies": acc,
                    "epoch": step / len(accuracies),
                },
            )
        )
        if step % eval_every == 0:
            seq.append((step, {"eval_loss": 0.69 - 0.01 * step, "eval_rewards/accuracies": acc}))
    return seq


def run_trial(
    output_dir: Path,
    *,
    experiment_id: str,
    run_name: str,
    config: dict,
    accuracies: list[float],
    parent_run_id: str | None = None,
    rank: int = 0,
    finalize: bool = True,
    **kwargs,
) -> MlflowLoggingCallback:
    """Drive the callback as `Trainer.train()` does, with the files the trainer writes before finalize."""
    output_dir.mkdir(parents=True, exist_ok=True)
    callback = MlflowLoggingCallback(
        tracking_uri=mlflow_store.tracking_uri(),
        experiment_id=experiment_id,
        run_name=run_name,
        parent_run_id=parent_run_id,
        config=config,
        **kwargs,
    )
    args = TrainingArguments(output_dir=str(output_dir), report_to="none")
    state, control = TrainerState(is_world_process_zero=rank == 0), TrainerControl()
    callback.on_train_begin(args, state, control)
    history = []
    for step, logs in log_sequence(accuracies):
        state.global_step = step
        callback.on_log(args, state, control, logs=dict(logs))
        history.append({**logs, "step": step})
    callback.on_train_end(args, state, control)
    if rank == 0:  # only rank 0's trainer writes files
        plot_curves(history, output_dir)
        (output_dir / "trainer_state.json").write_text(
            json.dumps({"log_history": history, "global_step": step})
        )
        (output_dir / "resolved_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if finalize:
        callback.finalize_run(output_dir, dataset_fingerprint="fp-1234")
    return callback


def download_text(client: MlflowClient, run_id: str, path: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


def artifact_names(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


SPEC = {
    "base": "configs/dpo_tiny.yaml",
    "metric": "eval_rewards/accuracies",
    "mode": "max",
    "search_space": {"pref_loss": {"grid": ["sigmoid", "ipo", "simpo"]}, "pref_beta": {"grid": [0.1, 0.5]}},
    "overrides": {"hub_token": SECRET},
}
METRIC = "eval_rewards/accuracies"



def start_parent(tmp: Path, run_name: str, *, experiment_id: str, spec: dict = SPEC,
                 spec_path: str | None = None) -> SweepParent:
    """A sweep's parent run started as the driver starts it (spooled, sent by its sender thread), in `tmp`
    (its experiment dir and output dir); `.run_id` is set once the store made it, `.finish(...)` ends it."""
    sweep = SimpleNamespace(source=spec, name=run_name, path=spec_path)
    parent = SweepParent.start(sweep, exp_path=str(tmp / "exp"), output_dir=tmp / "out", experiment_id=experiment_id,
                               tags={})  # fmt: skip
    assert parent.run_id, "the SQLite store did not create the parent run within the open wait"
    return parent
