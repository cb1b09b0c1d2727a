"""What runs inside each Ray Train worker: the per-worker loop and its Ray callbacks.

`rayjobs.train.train_fn_per_worker` (a light module, since Ray's controller unpickles it) imports this
one inside the worker, where transformers and MLflow are needed anyway.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rayjobs.train_loop import TrainLoop
from trainer.config import with_overrides

INVOCATION_FILE = "prefsweep_invocation.txt"
"""Written into each checkpoint reported to Ray: which `fit()` made it (see `_resume_checkpoint`)."""


AUTO_REPORTS = 8
"""`ray.report_every_steps: 0`: training logs are reported about this many times per run."""


def report_interval(every: int, max_steps: int, logging_steps: float) -> int:
    """Steps between two reports of training logs: `every` when set (> 0), else max_steps / AUTO_REPORTS,
    never less than one logging interval (Hugging Face's `state.logging_steps`)."""
    if every > 0:
        return every
    return max(1, math.ceil(logging_steps or 1), math.ceil(max_steps / AUTO_REPORTS))


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class RayReportCallback(TrainerCallback):
    """Reports every Hugging Face log (training and evaluation) to Ray Train, so Tune sees each step.

    Ray's own `RayTrainReportCallback` reports only at checkpoints; schedulers like ASHA need the metric
    as it is logged. Each report carries the latest value of every metric logged so far (an eval
    metric stays visible between evaluations), `step` (the optimizer step) and `evaluations` (how many
    evaluations have run: ASHA's clock for eval metrics, so a rung is judged on a fresh evaluation,
    never on the training log that precedes it at the same step).

    `ray.train.report` is a barrier through Ray Train's synchronization actor (about 0.2 s a report on
    2 cores), so training logs are reported in step-based batches: at most every `report_interval`
    steps (the latest values of the logs in between; MLflow still gets every one), while evaluations,
    checkpoints and the logs of the last step are always reported. The choice depends only on the step
    and the logged keys, which every rank has alike (Hugging Face calls `on_log` on all ranks with the
    same, already-reduced values), so every rank reports at the same logs; Ray keeps rank 0's metrics.
    On save, rank 0 also
    hands the checkpoint to Ray (kept under `ray.storage_path`, pruned to `ray.num_to_keep`), so a
    restarted worker group (`ray.max_failures`) resumes from it.

    With a sweep `metric`, every report carries it first (NaN until it is first logged): Tune's
    trial table shows the first reported keys, and Tune checks each result for the metric.
    """

    def __init__(self, invocation: str = "", metric: str | None = None, every: int = 0):
        self.invocation = invocation
        self.metric = metric
        self.every = every
        self.latest: dict[str, float] = {}
        self.evaluations = 0
        self.reported_step = 0

    def due(self, state, numbers: dict[str, float], evaluation_follows: bool = False) -> bool:
        """Whether this log is reported: an evaluation, the last step, or `report_interval` steps since the
        last report, unless an evaluation at this step follows (`control.should_evaluate`), whose report
        carries this log's values too."""
        if any(k.startswith("eval_") for k in numbers):
            return True
        if evaluation_follows:
            return False
        if state.global_step >= state.max_steps:
            return True
        interval = report_interval(self.every, state.max_steps, state.logging_steps)
        return state.global_step - self.reported_step >= interval

    def _report(self, state) -> dict[str, float]:
        report: dict[str, float] = {}
        if self.metric:
            report[self.metric] = self.latest.get(self.metric, math.nan)
        report["step"] = int(state.global_step)
        if "loss" in self.latest:
            report["loss"] = self.latest["loss"]
        report.update({k: v for k, v in self.latest.items() if k not in report})
        report["epoch"] = float(state.epoch or 0.0)
        report["evaluations"] = self.evaluations
        return report

    def on_log(self, args, state, control, logs=None, **kwargs):
        import ray.train

        numbers = _numbers(logs or {})
        if any(k.startswith("eval_") for k in numbers):
            self.evaluations += 1
        self.latest.update(numbers)
        if self.due(state, numbers, evaluation_follows=bool(control.should_evaluate)):
            ray.train.report(self._report(state))
            self.reported_step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        from trainer.checkpoints import last_complete_checkpoint

        metrics = self._report(state)
        self.reported_step = state.global_step
        # complete: PreferenceTrainer marks it after every rank wrote its files (on_save follows)
        source = last_complete_checkpoint(args.output_dir) if state.is_world_process_zero else None
        if source is None:
            ray.train.report(metrics)
            return
        Path(source, INVOCATION_FILE).write_text(self.invocation)
        checkpoint = ray.train.Checkpoint.from_directory(source)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"{Path(source).name}")


class RayProgressCallback(TrainerCallback):
    """A training progress bar drawn by the Ray driver (`ray.experimental.tqdm_ray`), rank 0 only.

    A worker's own tqdm writes carriage returns that Ray's log forwarding turns into a wall of lines.
    """

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None
        self.shown = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step")
            self.shown = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.shown)
            self.shown = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------- worker


def _resume_checkpoint(invocation: str, output_dir: Path) -> str | None:
    """The Hugging Face checkpoint to resume from after a worker-group restart of this same `fit()`.

    Ray Train V2 also restores a run of the same name from storage on a later `fit()`; that one is
    ignored (its invocation differs): a new run starts over unless its config says
    `resume_from_checkpoint`, as with `use_ray: false`. A checkpoint on object storage (`storage_path:
    s3://...`) is downloaded into `<output_dir>/restored/<name>` first: a trial resumed on another node,
    or from a fresh working dir, has nothing of its own on disk.
    """
    import pyarrow.fs
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    from trainer.checkpoints import checkpoint_is_complete

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        path = Path(checkpoint.path)
    else:
        path = Path(checkpoint.to_directory(str(output_dir / "restored" / Path(checkpoint.path).name)))
    marker = path / INVOCATION_FILE
    if not marker.is_file() or marker.read_text() != invocation or not checkpoint_is_complete(path):
        return None
    return str(path)


def quiet_report_log() -> None:
    """Ray Train (2.60) logs every report, its whole metrics dict, at INFO from a logger named by its file
    path (`ray/train/v2/_internal/execution/context.py`): outside `ray.train`, so the run's
    `LoggingConfig(log_level="WARNING")` misses it and each report prints a screen-wide line. Its
    warnings still print."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout
        return
    if isinstance(getattr(context, "logger", None), logging.Logger):
        context.logger.setLevel(logging.WARNING)


def train_as_one_process(world_size: int, deepspeed: bool, environ=None) -> bool:
    """A run with one worker trains as the in-process run does: no DistributedDataParallel.

    Ray Train opens a process group and sets `LOCAL_RANK` even for a single worker, and from `LOCAL_RANK`
    accelerate concludes a distributed run (MULTI_CPU / MULTI_GPU), so the Trainer would wrap the model in
    DDP with a world of one: every backward copies each gradient into DDP's buckets and all-reduces them
    with itself. Without `LOCAL_RANK` accelerate sees one process; Ray's process group stays open, unused.
    DeepSpeed keeps it (its engine reads the launcher's environment). Returns whether it was dropped."""
    environ = os.environ if environ is None else environ
    if world_size != 1 or deepspeed or "LOCAL_RANK" not in environ:
        return False
    del environ["LOCAL_RANK"]
    return True


def run_worker(loop: TrainLoop) -> None:
    """The same `run_training` as in-process, plus the Ray report callback, (rank 0) MLflow and the
    callbacks `loop.callbacks` installs. `loop.config` is the driver's parsed config, used as it is
    (a worker-group restart of this `fit()` only adds its checkpoint to resume from)."""
    import ray.train

    from trainer.workflow import run_training

    quiet_report_log()
    cfg = loop.config
    resume = _resume_checkpoint(loop.invocation, cfg.output_dir)
    if resume is not None:
        cfg = with_overrides(cfg, {"resume_from_checkpoint": resume, "overwrite_output_dir": True})
    if cfg.training.get("deepspeed"):
        # ZeRO-3 builds the model under deepspeed.zero.Init, which sizes its partitions from
        # DeepSpeed's own comm layer: attach it to the process group Ray Train already set up.
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cfg.ray.use_gpu else "gloo")
    context = ray.train.get_context()
    train_as_one_process(context.get_world_size(), bool(cfg.training.get("deepspeed")))
    rank = context.get_world_rank()
    callbacks: list[TrainerCallback] = [RayReportCallback(loop.invocation, loop.metric, cfg.ray.report_every_steps)]
    callbacks += [callback for make in loop.callbacks if (callback := make(rank)) is not None]
    if loop.progress and rank == 0:
        callbacks.append(RayProgressCallback(loop.name or cfg.output_dir.name))
    tracker = None
    if loop.tracking is not None:
        from rayjobs.tracking.callback import MlflowLoggingCallback

        tracker = MlflowLoggingCallback(**loop.tracking, config=cfg.to_flat_dict(), invocation=loop.invocation)
        callbacks.append(tracker)
    result = None
    try:
        result = run_training(cfg, callbacks=callbacks)
    finally:
        if tracker is not None:
            tracker.finalize_run(
                cfg.output_dir,
                dataset_fingerprint=result.dataset_fingerprint if result else None,
                status="FINISHED" if result else "FAILED",
            )
