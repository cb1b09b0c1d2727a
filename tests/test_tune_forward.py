"""`rayjobs.tune_forward.fit_and_forward`: every Train report reaches Tune, in order, from the calling thread,
including the last one queued right before `fit()` returns (the report Ray's TuneReportCallback could strand,
hanging the trial), and nothing is reported after `fit_and_forward` returns."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from rayjobs.tune_forward import CHECKPOINT_PATH_KEY, QueueReportCallback, fit_and_forward


class Recorder:
    def __init__(self):
        self.items, self.threads = [], set()

    def __call__(self, item):
        self.items.append(item)
        self.threads.add(threading.get_ident())


def test_the_last_report_queued_as_fit_returns_is_forwarded_in_order_from_the_calling_thread():
    reports, got = queue.Queue(1), Recorder()

    def fit():  # like the controller: each put waits for the slot; the last lands as fit returns
        for step in range(1, 5):
            reports.put({"step": step})
        return "result"

    assert fit_and_forward(fit, reports, got, poll_s=0.01) == "result"
    assert got.items == [{"step": 1}, {"step": 2}, {"step": 3}, {"step": 4}]
    assert got.threads == {threading.get_ident()}
    assert reports.empty()


def test_a_slow_reader_still_gets_everything_and_nothing_after_return():
    reports, got = queue.Queue(1), Recorder()

    def slow(item):  # Tune's report blocks until the trial's next step is asked for
        time.sleep(0.05)
        got(item)

    def fit():
        for step in range(1, 4):
            reports.put({"step": step})

    assert fit_and_forward(fit, reports, slow, poll_s=0.01) is None
    n = len(got.items)
    time.sleep(0.1)
    assert n == len(got.items) == 3


def test_fit_errors_are_raised_after_its_reports_are_forwarded():
    reports, got = queue.Queue(1), Recorder()

    def fit():
        reports.put({"step": 1})
        raise RuntimeError("training failed at step 2")

    with pytest.raises(RuntimeError, match="training failed at step 2"):
        fit_and_forward(fit, reports, got, poll_s=0.01)
    assert got.items == [{"step": 1}]


def test_the_callback_queues_rank_0_metrics_and_the_checkpoint_path():
    reports = queue.Queue()
    callback = QueueReportCallback(reports)

    class Checkpoint:
        path = "/bucket/sweep/trial_000/train/checkpoint-4"

    rank0, rank1 = {"step": 4, "loss": 0.5}, {"step": 4, "loss": 0.7}
    callback.after_report(None, [rank0, rank1], Checkpoint())
    callback.after_report(None, [{"step": 5, "loss": 0.4}], None)
    assert reports.get_nowait() == {"step": 4, "loss": 0.5, CHECKPOINT_PATH_KEY: Checkpoint.path}
    assert reports.get_nowait() == {"step": 5, "loss": 0.4}
    assert rank0 == {"step": 4, "loss": 0.5}  # the controller's dict is not changed
