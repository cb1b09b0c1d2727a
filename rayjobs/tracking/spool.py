"""Delivery of a run's spooled MLflow items to the tracking store, so that training never waits on, or dies
with, the tracking server. The spool file is `rayjobs.tracking.spool_file`; `prefsweep mlflow-sync OUTPUT_DIR`
(`rayjobs.tracking.sync`) replays what is left.

    training thread (on_log)                          sender (daemon thread)
      append one JSON line, fsync  -->  <output_dir>/mlflow_spool.jsonl  <--  "run" / "sent" markers
      hand the item over (never blocks)  -->  bounded deque  -->  log_batch (steps coalesced),
                                                                  retried with bounded backoff

Every param, tag, metric point, artifact list and the final status is an *item* with a sequence number,
delivered strictly in order; a `sent` marker records the last item that reached the store. A metric
point is (key, value, timestamp, step) with the timestamp fixed when it is spooled, so sending it twice
is harmless on SQL stores (the point is their primary key; MLflow skips existing ones) and `mlflow-sync`
additionally drops points already in the run's history: replays never duplicate.

When the server is down at the start the run is created later (tagged with the spool's id, so a create
whose answer was lost is found instead of repeated). A restarted worker with the same run identity
resumes the spool; a spool left by a finished or different run is moved aside (`mlflow_spool.N.jsonl`)
if anything in it was not sent, so `mlflow-sync` still finds it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rayjobs.tracking.client import is_permanent, short_error
from rayjobs.tracking.runs import open_run
from rayjobs.tracking.spool_file import Spool, metric_points
from rayjobs.tracking.store import find_sweep_parent, resolve_experiment
from rayjobs.tracking.tags import TAG_DROPPED_LOG_BATCHES, TAG_KIND, TAG_SWEEP_ID

logger = logging.getLogger("prefsweep.mlflow")

TAG_SPOOL_ID = "prefsweep.spool_id"
FLUSH_TIMEOUT_S = 30.0
OPEN_WAIT_S = 2.0  # how long the start of training waits for the run to be opened
MAX_PENDING = 10_000  # items held in memory; past that the spool file is the queue
MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then 8 s between tries for as long as the outage lasts


# ------------------------------------------------------------------------------------------- delivery


class Delivery:
    """Sends spooled items to the store; `dedupe` (for `mlflow-sync`) first drops points the run's history
    already holds, which covers stores without the SQL primary key and spools whose markers were lost."""

    def __init__(self, spool: Spool, tracking_uri: str, *, dedupe: bool = False, on_run=None):
        self.spool = spool
        self.client = MlflowClient(tracking_uri)
        self.dedupe = dedupe
        self.on_run = on_run
        self._history: dict[str, set] = {}
        self.reattached = False
        """This spool found its run already in the store, made by another spool (a trial resumed where its
        output dir, and so its spool, is gone: another node, a fresh working dir); the points it holds
        stay, a re-run step is not sent again."""
        self.points_sent = 0
        self.points_present = 0
        self.leaderboard: str | None = None  # a sweep parent's, as text, once its leaderboard item is sent

    @property
    def run_id(self) -> str | None:
        return self.spool.state.run_id

    def deliver(self, items: list[dict]) -> None:
        """Send `items` (consecutive, in order); raises what MLflow raised. Several items only for metrics."""
        op = items[0]["op"]
        if op == "open":
            self._open(items[0])
            return
        if self.run_id is None:
            raise MlflowException("the run was never created", error_code="TEMPORARILY_UNAVAILABLE")
        if op == "metrics":
            metrics = [Metric(k, v, ts, step) for item in items for k, v, ts, step in item["metrics"]]
            new = metrics
            if self.dedupe:
                new = [m for m in metrics if (m.step, m.timestamp, m.value) not in self._logged(m.key)]
            elif self.reattached:  # one value per key and step: the first logged, by an earlier attempt
                new = [m for m in metrics if m.step not in {step for step, _, _ in self._logged(m.key)}]
            if new:
                self.client.log_batch(self.run_id, metrics=new)
            self.points_sent += len(new)
            self.points_present += len(metrics) - len(new)
        elif op == "tags":
            tags = dict(items[0]["tags"])
            dropped = sum(1 for d in self.spool.state.dropped if d["item"] == "metrics")
            if items[0].get("count_dropped") and dropped:
                tags[TAG_DROPPED_LOG_BATCHES] = str(dropped)
            if tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        elif op == "artifacts":
            root = self.spool.path.parent  # the output dir, wherever it has moved since
            for name, artifact_path in items[0]["files"]:
                if (root / name).is_file():
                    self.client.log_artifact(self.run_id, str(root / name), artifact_path=artifact_path)
            for name, text in items[0].get("texts", {}).items():
                self.client.log_text(self.run_id, text, name)
        elif op == "outputs":
            from rayjobs.tracking import trial_outputs

            trial_outputs.deliver(self.client, self.run_id, self.spool.path.parent, items[0])
        elif op == "leaderboard":
            from rayjobs.tracking import parent_run

            self.leaderboard = parent_run.deliver_leaderboard(self.client, self.run_id, items[0])
        elif op == "end":
            self.client.set_terminated(self.run_id, status=items[0]["status"])

    def _logged(self, key: str) -> set:
        if key not in self._history:
            history = self.client.get_metric_history(self.run_id, key)
            self._history[key] = {(m.step, m.timestamp, m.value) for m in history}
        return self._history[key]

    def _open(self, item: dict) -> None:
        """Find or create the run (see `rayjobs.tracking.runs.open_run`), marked with this spool's id."""
        fresh = self.run_id is None and not item.get("run_id")
        resolved: list[str] = []

        def experiment_id() -> str:
            if not resolved:
                resolved.append(resolve_experiment(item.get("experiment_id"), item.get("experiment_name"),
                                                   uri=self.client.tracking_uri))  # fmt: skip
            return resolved[0]

        parent_run_id, tags = item.get("parent_run_id"), item["tags"]
        if not parent_run_id and tags.get(TAG_SWEEP_ID) and tags.get(TAG_KIND) == "trial":
            # A trial started before its sweep's parent run existed: the parent may exist now. If it still
            # does not, the driver links this run when it creates the parent and again before its leaderboard.
            parent_run_id = find_sweep_parent(self.client, experiment_id(), tags[TAG_SWEEP_ID])
            if parent_run_id:
                tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
        run_id, created = open_run(
            self.client,
            experiment_id=experiment_id,
            run_name=item["run_name"],
            params=item["params"],
            tags=tags,
            run_id=self.run_id or item.get("run_id"),
            parent_run_id=parent_run_id,
            marker=(TAG_SPOOL_ID, item["spool_id"]),
        )
        self.reattached = fresh and not created
        if run_id != self.run_id:
            self.spool.mark_run(run_id)
            if self.on_run is not None:
                self.on_run(run_id)


def _groups(items: list[dict], single_upto: int = 0):
    """Consecutive metrics items share one request (up to MLflow's 1000 points); other items go alone."""
    group: list[dict] = []
    for item in items:
        if group and (
            item["op"] != "metrics"
            or group[0]["op"] != "metrics"
            or item["seq"] <= single_upto
            or sum(map(metric_points, group)) + metric_points(item) > MAX_METRICS_PER_REQUEST
        ):
            yield group
            group = []
        group.append(item)
        if item["op"] != "metrics" or item["seq"] <= single_upto:
            yield group
            group = []
    if group:
        yield group


# --------------------------------------------------------------------------------------------- sender


class Sender(threading.Thread):
    """Drains unsent items in the background: one request at a time, in order, retried with bounded backoff
    while the store fails; warns once when an outage starts and once when its backlog has been replayed."""

    def __init__(self, delivery: Delivery):
        super().__init__(name=f"mlflow-spool:{delivery.spool.path.parent.name}", daemon=True)
        self.delivery = delivery
        self.spool = delivery.spool
        self._cv = threading.Condition()
        self._stop_event = threading.Event()
        self._pending: collections.deque[dict] = collections.deque()
        self._spilled = False  # items beyond MAX_PENDING live only in the spool file
        self._busy = False
        self._single_upto = 0  # a refused group is retried item by item, so only the bad item is dropped
        self.gave_up: str | None = None  # the run could not be created: everything stays spooled
        self.failures = 0  # consecutive
        self.retried = 0  # transient failures in all
        self._outage_since: float | None = None
        self._outage_logged = False
        self._replay: dict | None = None
        self._reload()

    def _reload(self) -> None:
        unsent = self.spool.state.unsent()
        self._pending.extend(unsent[:MAX_PENDING])
        self._spilled = len(unsent) > MAX_PENDING

    def put(self, item: dict) -> None:
        """Hand over an item already written to the spool; never blocks on the store."""
        with self._cv:
            if self._pending and item["seq"] <= self._pending[-1]["seq"]:
                return  # already read back from the spool file
            if self._spilled or len(self._pending) >= MAX_PENDING:
                self._spilled = True
            else:
                self._pending.append(item)
            self._cv.notify_all()

    def run(self) -> None:
        while not self._stop_event.is_set():
            with self._cv:
                while not self._stop_event.is_set() and (self.gave_up or not (self._pending or self._spilled)):
                    self._cv.wait()
                if self._stop_event.is_set():
                    return
                if not self._pending:
                    self._spilled = False
                    self._reload()
                    continue
                group = next(_groups(list(self._pending), self._single_upto))
                self._busy = True
            try:
                done = self._attempt(group)
            finally:
                with self._cv:
                    self._busy = False
                    if done:
                        for _ in group:
                            self._pending.popleft()
                    self._cv.notify_all()
            if not done:
                self._stop_event.wait(BACKOFF_S[min(self.failures, len(BACKOFF_S)) - 1])

    def _attempt(self, group: list[dict]) -> bool:
        """True when the group is finished with (sent, or refused for good)."""
        try:
            self.delivery.deliver(group)
        except Exception as err:  # noqa: BLE001 - nothing the store raises may reach the training loop
            if is_permanent(err):
                return self._refused(group, err)
            self.failures += 1
            self.retried += 1
            logger.debug("MLflow: %s failed, will retry: %s", group[0]["op"], short_error(err))
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            if self.failures >= 2 and not self._outage_logged:
                self._outage_logged = True
                logger.warning(
                    "MLflow at %s is unreachable (%s); training goes on, every point is kept in %s and "
                    "retried in the background", self.delivery.client.tracking_uri, short_error(err), self.spool.path,
                )  # fmt: skip
            return False
        self.spool.mark_sent(group[-1]["seq"])
        if self._outage_logged and self._replay is None:
            backlog = [i for i in self.spool.state.items if i["seq"] >= group[0]["seq"]]
            self._replay = {
                "upto": backlog[-1]["seq"],
                "points": sum(map(metric_points, backlog)),
                "seconds": time.monotonic() - self._outage_since,
            }
        self.failures, self._outage_since, self._outage_logged = 0, None, False
        if self._replay and self.spool.state.sent_upto >= self._replay["upto"]:
            logger.warning(
                "MLflow is back after %.0f s: replayed %d metric points from %s",
                self._replay["seconds"], self._replay["points"], self.spool.path,
            )  # fmt: skip
            self._replay = None
        return True

    def _refused(self, group: list[dict], err: BaseException) -> bool:
        if len(group) > 1:
            self._single_upto = group[-1]["seq"]
            return False
        item = group[0]
        if item["op"] == "open":
            self.gave_up = short_error(err)
            logger.error(
                "MLflow refused to open the run (%s); nothing more is sent, all of it stays in %s: fix the "
                "cause, then run `prefsweep mlflow-sync %s`", self.gave_up, self.spool.path, self.spool.path.parent,
            )  # fmt: skip
            return False
        self.spool.mark_dropped(item, err)
        steps = sorted({step for *_, step in item.get("metrics", ())})
        logger.warning("MLflow refused the %s of step %s: %s", item["op"], ",".join(map(str, steps)) or "-",
                       short_error(err))  # fmt: skip
        return True

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until everything is sent. Gives up after `timeout_s` while the store is failing (and after
        10 x `timeout_s` in any case); True when nothing is left unsent."""
        start = time.monotonic()
        with self._cv:
            while (self._pending or self._spilled or self._busy) and not self.gave_up and self.is_alive():
                waited = time.monotonic() - start
                if waited >= 10 * timeout_s or (waited >= timeout_s and self.failures):
                    break
                self._cv.wait(0.5)
            return not self.spool.state.unsent()

    def wait_sent(self, seq: int, timeout_s: float) -> bool:
        """Wait until item `seq` is sent, a try fails or `timeout_s` passes; True when it was sent."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self.spool.state.sent_upto < seq and not (self.failures or self.gave_up):
                left = deadline - time.monotonic()
                if left <= 0 or not self.is_alive():
                    break
                self._cv.wait(min(left, 0.5))
            return self.spool.state.sent_upto >= seq

    def stop(self) -> None:
        self._stop_event.set()
        with self._cv:
            self._cv.notify_all()
