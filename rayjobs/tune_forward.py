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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ray.train.v2.api.callback import UserCallback

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback used: a report's checkpoint directory


class QueueReportCallback(UserCallback):
    """Runs in the Ray Train controller: rank 0's metrics of each report (and its checkpoint's path) go to
    `reports`, a `ray.util.queue.Queue` the trial's thread drains (one slot: the controller waits for it)."""

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        report = dict(metrics[0])
        if checkpoint:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.reports.put(report)


def fit_and_forward(fit: Callable[[], Any], reports, report: Callable[[dict], None], poll_s: float = 0.5) -> Any:
    """Run `fit()` in a thread; pass every item of `reports` (a queue with `get(timeout=...)` raising
    `queue.Empty`, and `empty()`) to `report` in order until `fit()` has returned and nothing is left.
    Returns what `fit()` returned; re-raises what it raised, after forwarding what it reported."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = err

    fitting = threading.Thread(target=run, name="prefsweep-fit", daemon=True)
    fitting.start()
    # The controller's put returns before `fit()` can: once the thread is done, every report is queued.
    while fitting.is_alive() or not reports.empty():
        try:
            item = reports.get(timeout=poll_s)
        except queue.Empty:
            continue
        report(item)
    fitting.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
