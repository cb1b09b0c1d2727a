"""Forward a trial's Ray Train reports to Tune from the trial's own thread.

Ray's `TuneReportCallback` puts each report in a queue that the trial actor's *main* thread drains and
re-reports into a one-slot result queue, while the trial's training thread, once `fit()` returns,
reports Tune's end-of-function marker into that same slot. When the last Train report is taken off the
queue just before `fit()` returns, both race for the slot; if the marker wins, the main thread blocks
forever on its put (only it reads that slot) and the trial stays RUNNING with its last report missing
(Ray 2.60 `train/_internal/session.py`: `_get_result_from_queues` vs. the function trainable's
`RESULT_DUPLICATE` report; seen once in 32 trials on a loaded 2-core machine).

Here the training thread itself calls `tune.report` for every Train report, the one path Tune
synchronizes, and reports nothing after the last one is forwarded: `fit()` runs in a helper thread and
this thread drains the queue until `fit()` has returned and the queue is empty.

The queues live in one actor per sweep (`ReportSlots`, no CPU, one one-slot queue per trial attempt),
not in an actor per trial: a small actor process costs ~2.4 CPU-seconds to start, paid 32 times in a
32-trial sweep.

A sweep reuses its trial actors (`reuse_actors`), so a trial a scheduler stops (ASHA) is not ended by
killing its actor, whose Ray Train controller and workers die with it: Tune keeps the actor for the next
trial and, when it hands it over, ends the old trial's thread (Tune's report raises `SystemExit` in it).
`fit_and_forward` then aborts the old trial's Ray Train run through its controller (whose handle came
with its first report; on the sweep's own local Ray the controller runs in the trial's actor,
`TrialSlot.abort_here`) before the thread ends, so the next trial finds its CPUs free and no worker of
the stopped trial trains on.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ray.train.v2.api.callback import UserCallback

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback used: a report's checkpoint directory


class ReportSlots:
    """A sweep's report queues, one slot per trial attempt (`key`): the controller's `put` waits until the
    trial has taken the previous report, so training runs at most one report ahead of Tune. Run as an
    async Ray actor (`ray.remote(ReportSlots)`), one per sweep."""

    def __init__(self):
        self.slots: dict[str, asyncio.Queue] = {}
        self.controllers: dict[str, Any] = {}  # each attempt's Ray Train controller, to abort its run

    def _slot(self, key: str) -> asyncio.Queue:
        return self.slots.setdefault(key, asyncio.Queue(1))

    async def put(self, key: str, report: dict, controller=None) -> None:
        if controller is not None:
            self.controllers[key] = controller
        await self._slot(key).put(report)

    async def get(self, key: str, timeout: float) -> tuple[bool, dict | None]:
        """(True, the next report), or (False, None) when none came within `timeout` seconds."""
        try:
            return True, await asyncio.wait_for(self._slot(key).get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def empty(self, key: str) -> bool:
        return self._slot(key).empty()

    async def controller(self, key: str):
        """The attempt's Ray Train controller (an actor handle), or None before its first report."""
        return self.controllers.get(key)

    async def forget(self, key: str) -> None:
        self.slots.pop(key, None)
        self.controllers.pop(key, None)


class TrialSlot:
    """One trial attempt's slot in the sweep's `ReportSlots` actor, as the queue `QueueReportCallback` and
    `fit_and_forward` use (`put`, `get(timeout=...)` raising `queue.Empty`, `empty`). Pickled into the
    Ray Train controller with the callback."""

    def __init__(self, slots, key: str, *, controller_actor: bool = True):
        """`controller_actor`: the run's controller is an actor, whose handle goes with the first report
        (False: it runs in the trial's own actor, `abort_here` aborts it)."""
        self.slots, self.key = slots, key
        self.sent_controller = not controller_actor

    def put(self, report: dict) -> None:
        """In the controller: queue `report`, waiting for the slot; the first also hands over the controller."""
        import ray

        controller = None if self.sent_controller else ray.get_runtime_context().current_actor
        ray.get(self.slots.put.remote(self.key, report, controller))
        self.sent_controller = True

    def get(self, timeout: float) -> dict:
        import ray

        got, report = ray.get(self.slots.get.remote(self.key, timeout))
        if not got:
            raise queue.Empty
        return report

    def empty(self) -> bool:
        import ray

        return ray.get(self.slots.empty.remote(self.key))

    def abort_run(self, timeout_s: float = 30.0) -> None:
        """In the trial: abort the attempt's Ray Train run (its workers stop, its placement group goes)."""
        import ray

        controller = ray.get(self.slots.controller.remote(self.key))
        if controller is None:
            return
        try:
            ray.get(controller.abort.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - the abort ends by exiting the controller's actor
            pass

    def abort_here(self, trainer, timeout_s: float = 30.0) -> None:
        """In the trial: abort the attempt's Ray Train run whose controller runs in this process
        (`LeanTorchTrainer.request_abort`). The controller may be waiting to put a report that nobody
        takes any more: the slot is emptied until the abort is done."""
        done = trainer.request_abort()
        if done is None:
            return
        deadline = time.monotonic() + timeout_s
        while not done.done() and time.monotonic() < deadline:
            try:
                self.get(timeout=0.2)
            except queue.Empty:
                pass

    def forget(self) -> None:
        self.slots.forget.remote(self.key)


class QueueReportCallback(UserCallback):
    """Runs in the Ray Train controller: rank 0's metrics of each report (and its checkpoint's path) go to
    `reports`, a `TrialSlot` the trial's thread drains (one slot: the controller waits for it)."""

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        report = dict(metrics[0])
        if checkpoint:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.reports.put(report)


def fit_and_forward(fit: Callable[[], Any], reports, report: Callable[[dict], None], poll_s: float = 0.5,
                    abort: Callable[[], None] | None = None, abort_wait_s: float = 30.0) -> Any:
    """Run `fit()` in a thread; pass every item of `reports` (a queue with `get(timeout=...)` raising
    `queue.Empty`, and `empty()`) to `report` in order until `fit()` has returned and nothing is left.
    Returns what `fit()` returned; re-raises what it raised, after forwarding what it reported.

    When `report` raises (Tune ended the trial: `SystemExit`) while `fit()` still runs, `abort()` ends the
    run and `fit()`'s thread gets up to `abort_wait_s` to return before the error goes on."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = err

    fitting = threading.Thread(target=run, name="prefsweep-fit", daemon=True)
    fitting.start()
    # The controller's put returns before `fit()` can: once the thread is done, every report is queued.
    try:
        while fitting.is_alive() or not reports.empty():
            try:
                item = reports.get(timeout=poll_s)
            except queue.Empty:
                continue
            report(item)
    except BaseException:
        if abort is not None and fitting.is_alive():
            abort()
            fitting.join(timeout=abort_wait_s)
        raise
    fitting.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
