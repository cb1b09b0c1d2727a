"""`rayjobs.tune_forward.fit_and_forward`: every Train report reaches Tune, in order, from the calling thread,
including the last one queued right before `fit()` returns (the report Ray's TuneReportCallback could strand,
hanging the trial), and nothing is reported after `fit_and_forward` returns; the sweep's `ReportSlots` keep
each trial attempt's reports apart, one at a time."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

from rayjobs.tune_forward import CHECKPOINT_PATH_KEY, QueueReportCallback, ReportSlots, fit_and_forward


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


def test_a_trial_tune_ends_mid_run_aborts_its_run_before_its_thread_ends():
    """Tune hands a stopped trial's actor to the next trial by making its report raise SystemExit; the run,
    still training, must be aborted (not left holding its workers) before the thread ends."""
    reports, aborted, got = queue.Queue(1), threading.Event(), []

    def fit():  # trains until aborted, a report per step
        step = 1
        while not aborted.is_set():
            try:
                reports.put({"step": step}, timeout=0.01)
                step += 1
            except queue.Full:
                pass
        return "aborted"

    def report(item):
        got.append(item["step"])
        if len(got) == 2:
            raise SystemExit(0)  # what Tune's report does once the trial is stopped

    aborts = []
    with pytest.raises(SystemExit):
        fit_and_forward(fit, reports, report, poll_s=0.01, abort=lambda: (aborts.append(1), aborted.set()))
    assert got == [1, 2] and aborts == [1]
    assert not any(t.name == "prefsweep-fit" and t.is_alive() for t in threading.enumerate())


def test_an_error_after_fit_returned_aborts_nothing():
    reports, aborts = queue.Queue(1), []

    def fit():
        reports.put({"step": 1})

    def report(item):
        time.sleep(0.05)  # fit() has returned by now
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        fit_and_forward(fit, reports, report, poll_s=0.01, abort=lambda: aborts.append(1))
    assert aborts == []


def test_report_slots_hold_one_report_per_trial_attempt_and_keep_attempts_apart():
    async def scenario():
        slots = ReportSlots()
        assert await slots.controller("trial_000/a") is None  # no report yet: nothing to abort
        await slots.put("trial_000/a", {"step": 1}, "controller of trial_000")
        await slots.put("trial_001/b", {"step": 7})  # another trial's slot is not full
        second = asyncio.ensure_future(slots.put("trial_000/a", {"step": 2}))
        await asyncio.sleep(0.05)
        assert not second.done()  # the controller waits until the trial took step 1
        assert await slots.get("trial_000/a", 1.0) == (True, {"step": 1})
        await asyncio.wait_for(second, 1.0)
        assert await slots.get("trial_000/a", 1.0) == (True, {"step": 2})
        assert await slots.empty("trial_000/a")
        assert await slots.get("trial_000/a", 0.01) == (False, None)  # nothing came: no report invented
        assert await slots.get("trial_001/b", 1.0) == (True, {"step": 7})
        assert await slots.controller("trial_000/a") == "controller of trial_000"
        await slots.forget("trial_000/a")
        await slots.forget("trial_001/b")
        assert slots.slots == {} and slots.controllers == {}

    asyncio.run(scenario())



def test_a_controller_here_is_aborted_while_it_waits_to_put_a_report_nobody_takes():
    """A stopped trial no longer takes reports; a controller running in its actor may be waiting to put one
    (slot full). `abort_here` empties the slot until the abort is done, so the controller reaches it."""
    import concurrent.futures

    from rayjobs.tune_forward import TrialSlot

    class LocalSlot(TrialSlot):
        def __init__(self):
            super().__init__(None, "trial_001/a", controller_actor=False)
            self.queue = queue.Queue(1)

        def put(self, report):
            self.queue.put(report)

        def get(self, timeout):
            return self.queue.get(timeout=timeout)

    slot, abort_requested, done = LocalSlot(), threading.Event(), concurrent.futures.Future()
    assert slot.sent_controller  # no actor handle goes with the first report: the controller is no actor

    def controller():  # reports every step; sees the abort only between two puts
        step = 0
        while not abort_requested.is_set():
            step += 1
            slot.put({"step": step})
        done.set_result(step)

    class Trainer:
        def request_abort(self):
            abort_requested.set()
            return done

    worker = threading.Thread(target=controller, daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while slot.queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the slot is full and the controller waits on its next put
    assert worker.is_alive() and not done.done()
    started = time.monotonic()
    slot.abort_here(Trainer(), timeout_s=10)
    assert done.done() and time.monotonic() - started < 5
    worker.join(timeout=5)
    assert not worker.is_alive()

    class NotRunning:
        def request_abort(self):
            return None

    slot.queue.put({"step": "left"})
    slot.abort_here(NotRunning(), timeout_s=10)  # nothing runs here: returns at once, takes no report
    assert slot.queue.get_nowait() == {"step": "left"}
