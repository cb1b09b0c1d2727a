"""Which Hugging Face logs `RayReportCallback` reports to Ray Train (each report is a barrier of every
worker): evaluations, the last step, and training logs at most every `report_interval` steps."""

from __future__ import annotations

from types import SimpleNamespace

from rayjobs.worker import RayReportCallback, report_interval


def reported(callback: RayReportCallback, max_steps: int, logging_steps: int, eval_steps: int | None):
    """The (step, kind) of each log the callback reports over one run, logs in Hugging Face's order
    (at a step: the training log, then the evaluation, which Hugging Face adds at the last step when it is off
    the schedule; at the end the train summary. The final evaluation after training reuses the last step's:
    `trainer.final_eval`)."""
    state = SimpleNamespace(global_step=0, max_steps=max_steps, logging_steps=logging_steps)
    logs = []
    for step in range(1, max_steps + 1):
        if step % logging_steps == 0:
            logs.append((step, "train", {"loss": 0.5}))
        if eval_steps and (step % eval_steps == 0 or step == max_steps):
            logs.append((step, "eval", {"eval_loss": 0.5}))
    logs.append((max_steps, "summary", {"train_loss": 0.5, "train_runtime": 1.0}))
    out = []
    for i, (step, kind, numbers) in enumerate(logs):
        state.global_step = step
        follows = kind == "train" and i + 1 < len(logs) and logs[i + 1][:2] == (step, "eval")
        if callback.due(state, numbers, evaluation_follows=follows):
            out.append((step, kind))
            callback.reported_step = step
    return out


def test_report_interval():
    assert report_interval(0, 56, 2) == 7  # about 8 reports of training logs
    assert report_interval(0, 16, 2) == 2  # never more often than the logs come
    assert report_interval(0, 4, 1) == 1
    assert report_interval(5, 56, 2) == 5  # ray.report_every_steps


def test_a_56_step_run_reports_8_times_instead_of_37():
    """benchmarks.ray_overhead's run: 56 steps, a log every 2, an evaluation every 8 -> 28 training logs,
    7 evaluations, the summary and a second evaluation of step 56 after training were 37 reports. Now: a
    training log only when 7 steps passed since the last report and no evaluation follows at its step (the
    training logs between evaluations, at 2-6, 10-14, ..., never reach 7), so every evaluation, then the
    summary: 8."""
    got = reported(RayReportCallback(), max_steps=56, logging_steps=2, eval_steps=8)
    assert got == [(s, "eval") for s in range(8, 57, 8)] + [(56, "summary")]
    # 20 steps, interval 3: training logs at 4 and 12 (4 and 4 steps after a report; 18 is 2 after 16, and
    # 20's log is followed by the evaluation Hugging Face adds at the last step), evaluations, the summary
    off_schedule = reported(RayReportCallback(), max_steps=20, logging_steps=2, eval_steps=8)
    assert off_schedule == [(4, "train"), (8, "eval"), (12, "train"), (16, "eval"), (20, "eval"), (20, "summary")]


def test_without_evaluation_training_logs_are_reported_every_interval():
    """A 40-step run logging every step with no evaluation: interval 5 -> steps 5, 10, ..., 40, and the summary."""
    got = reported(RayReportCallback(), max_steps=40, logging_steps=1, eval_steps=None)
    assert got == [(s, "train") for s in range(5, 41, 5)] + [(40, "summary")]
    every_3 = reported(RayReportCallback(every=3), max_steps=10, logging_steps=1, eval_steps=None)
    assert every_3 == [(3, "train"), (6, "train"), (9, "train"), (10, "train"), (10, "summary")]


def test_the_worker_silences_ray_trains_per_report_info_line_but_not_its_warnings():
    import logging

    from ray.train.v2._internal.execution import context

    from rayjobs.worker import quiet_report_log

    ray_logger, root = context.logger, logging.getLogger()  # the logger Ray's report path writes to
    levels = ray_logger.level, root.level
    try:
        ray_logger.setLevel(logging.NOTSET)
        root.setLevel(logging.INFO)  # as Ray Train configures a worker's root logger
        assert not ray_logger.name.startswith("ray.train")  # why Ray's LoggingConfig misses it
        assert ray_logger.isEnabledFor(logging.INFO)
        quiet_report_log()
        assert not ray_logger.isEnabledFor(logging.INFO) and ray_logger.isEnabledFor(logging.WARNING)
    finally:
        ray_logger.setLevel(levels[0])
        root.setLevel(levels[1])
