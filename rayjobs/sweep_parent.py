"""The sweep driver's MLflow parent run, through the same spool and sender as a trial's run
(`rayjobs.tracking.spool`), so the driver starts, runs and ends whether or not the tracking server answers.

    start: a sweep id (new, or the one `--resume` reads back) -> prefsweep_parent_run.json
           spool items: open (spec as params, tags), the spec artifact; wait at most OPEN_WAIT_S
    trials carry the sweep id (tag `prefsweep.sweep_id`) and the parent's run id when it was known in time
    end:   spool items: leaderboard, end (status); wait at most FLUSH_TIMEOUT_S, then leave the rest spooled

Children created before the parent run exists are linked to it by the sweep id, in the store, by whichever
side comes second: the parent's creation links the trials already there (`_created`), a trial's own open
looks the parent up (`rayjobs.tracking.spool.Delivery`), and the leaderboard item links them all again
before it reads them (it is sent after every trial has ended, so no trial is missed when their spools were
sent first; `prefsweep mlflow-sync` sends sweep parents' spools last for the same reason). Linking in the
store, not by waiting for the parent's id, is what keeps the driver and the trials from ever waiting on it.

The spool is `<experiment dir>/mlflow_spool.jsonl` beside `prefsweep_parent_run.json` when the experiment
dir is local; with a cloud `storage_path` it is `<output_dir>/_sweep_parent/` (a spool is appended to in
place, which object stores do not do).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
import uuid
from pathlib import Path

from rayjobs.sweep_state import read_parent_run, write_parent_run
from rayjobs.tracking import parent_run, spool_file
from rayjobs.tracking import spool as mlflow_spool
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.client import fail_fast_http, short_error
from rayjobs.tracking.tags import TAG_SWEEP_ID

logger = logging.getLogger("prefsweep.mlflow")

KILLED_FLUSH_S = 5.0  # an interrupted sweep waits less for a failing store than a finished one


def spool_dir(exp_path: str, output_dir: Path) -> Path:
    return Path(exp_path) if "://" not in exp_path else Path(output_dir) / "_sweep_parent"


class SweepParent:
    """The parent run of one sweep: `start`, then `finish` once; `run_id` is None until the store made it."""

    def __init__(self, exp_path: str, where: Path, output_dir: Path, record: dict):
        self.exp_path, self.where, self.output_dir, self.record = exp_path, Path(where), Path(output_dir), record
        self.sweep_id: str = record["sweep_id"]
        self._spool: spool_file.Spool | None = None
        self._sender: mlflow_spool.Sender | None = None
        self.delivered = False  # every item reached the store (after `finish`)

    @classmethod
    def start(cls, spec, *, exp_path: str, output_dir: Path, experiment_id: str | None, tags: dict[str, str],
              resume: bool = False) -> SweepParent:
        """Spool the parent run's start and wait at most `OPEN_WAIT_S` for the store to create it. `resume`:
        the run (or, never created, the sweep id) that `prefsweep_parent_run.json` names is continued."""
        uri = mlflow_store.tracking_uri()
        previous = read_parent_run(exp_path) if resume else None
        if previous is not None and previous.get("tracking_uri") != uri:
            logger.warning("the MLflow parent run recorded in %s is in another store (%s): a new one is started",
                           exp_path, previous.get("tracking_uri"))  # fmt: skip
            previous = None
        elif resume and previous is None:
            logger.warning("no MLflow parent run recorded in %s: a new one is started", exp_path)
        record = {
            "sweep_id": (previous or {}).get("sweep_id") or uuid.uuid4().hex,
            "run_id": (previous or {}).get("run_id"),
            "experiment_id": (previous or {}).get("experiment_id") if previous else experiment_id,
            "tracking_uri": uri,
        }
        parent = cls(exp_path, spool_dir(exp_path, output_dir), output_dir, record)
        write_parent_run(exp_path, record)
        parent._open(spec, tags, reopen=previous is not None)
        return parent

    def _open(self, spec, tags: dict[str, str], *, reopen: bool) -> None:
        fail_fast_http(self.record["tracking_uri"])
        params, spec_item = parent_run.parent_items(spec.source)
        header = {
            "tracking_uri": self.record["tracking_uri"],
            "experiment_id": self.record["experiment_id"],
            "experiment_name": mlflow_store.experiment_name(),
            "run_name": spec.name,
            "parent_run_id": None,
            "run_id": self.record["run_id"],
            "params": params,
            "tags": {**parent_run.parent_tags(spec.path, tags), TAG_SWEEP_ID: self.sweep_id},
            "kind": "sweep",  # `prefsweep mlflow-sync` sends these last
            "spool_id": self.sweep_id,
        }
        self._spool = spool_file.Spool.open(self.where, header, reopen=reopen)
        delivery = mlflow_spool.Delivery(self._spool, self.record["tracking_uri"], on_run=self._created)
        self._sender = mlflow_spool.Sender(delivery)
        self._put(spec_item)
        self._sender.start()
        self._sender.wait_sent(self._spool.state.items[-1]["seq"], mlflow_spool.OPEN_WAIT_S)

    @property
    def run_id(self) -> str | None:
        return self._spool.state.run_id if self._spool is not None else self.record.get("run_id")

    def _put(self, record: dict) -> None:
        self._sender.put(self._spool.append(record))

    def _created(self, run_id: str) -> None:
        """In the sender thread, once the store has the run: record it for `--resume`, and adopt the trials
        that were created before it (best effort: the leaderboard item links them again)."""
        self.record["run_id"] = run_id
        try:
            write_parent_run(self.exp_path, self.record)
        except OSError as err:
            logger.warning("could not record the MLflow parent run in %s: %s", self.exp_path, err)
        client = self._sender.delivery.client if self._sender is not None else None
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
            mlflow_store.link_sweep_children(client, experiment_id, run_id, self.sweep_id)
        except Exception as err:  # noqa: BLE001 - the leaderboard item links them again
            logger.debug("MLflow: trials not linked to %s yet: %s", run_id, short_error(err))

    def finish(self, trials: list, *, metric: str, mode: str, status: str = "FINISHED",
               timeout_s: float | None = None) -> str:
        """Send what trials left, spool the leaderboard and the end, and return the leaderboard as text.
        Waits for a failing store at most `timeout_s` (default the flush timeout) in all, plus a second at
        each of the three steps. Never raises for the store: what is not sent stays spooled, and this
        prints the `prefsweep mlflow-sync` command that sends it."""
        if timeout_s is None:
            timeout_s = mlflow_spool.FLUSH_TIMEOUT_S if status == "FINISHED" else KILLED_FLUSH_S
        deadline = time.monotonic() + timeout_s
        item = parent_run.leaderboard_item(trials, metric=metric, mode=mode, sweep_id=self.sweep_id)
        spool, sender = self._spool, self._sender
        try:
            # The parent's start first: once it is in, the store is up for the trials' leftovers too.
            sender.flush(max(1.0, deadline - time.monotonic()))
            trials_sent = self._send_trial_leftovers(max(1.0, deadline - time.monotonic()))
            self._put(item)
            self._put({"op": "end", "status": status})
            self.delivered = sender.flush(max(1.0, deadline - time.monotonic()))
        finally:
            sender.stop()
            spool.close()
        if self.delivered and trials_sent:
            return sender.delivery.leaderboard or parent_run.local_text(item)
        unsent = spool.state.unsent()
        what = (f"the sweep's parent run ({'run ' + self.run_id if self.run_id else 'not created yet'}): its "
                f"{len(unsent)} items (start, spec, leaderboard, plots, best config, status {status}) are spooled "
                f"in {spool.path}" if unsent else "some trials' points: they are spooled in their output dirs")
        print(f"prefsweep: MLflow at {self.record['tracking_uri']} did not take {what}. When the server is back, "
              f"send them with:\n  {self.sync_command()}", file=sys.stderr, flush=True)  # fmt: skip
        return sender.delivery.leaderboard or parent_run.local_text(item)

    def _send_trial_leftovers(self, timeout_s: float) -> bool:
        """Send what trials left in their spools (a trial that ended while the store was down gave up after
        its own flush timeout; the store may be back by now), before the leaderboard reads their runs. Every
        trial has ended, so this is `prefsweep mlflow-sync` on their output dirs; stops at the first spool
        that cannot be sent (the store is down: the printed command sends the rest). True: nothing is left."""
        from rayjobs.tracking.sync import find_spools, sync_spool

        own = self._spool.path.resolve()
        for path in find_spools([str(self.output_dir)]) if self.output_dir.is_dir() else []:
            state = spool_file.SpoolState.load(path)
            if path.resolve() == own or state.header.get("kind") == "sweep" or not state.unsent():
                continue
            result = sync_spool(path, timeout_s=timeout_s)
            if result.error:
                logger.warning("MLflow: %s not sent yet: %s", path, result.error)
                return False
            print(f"prefsweep: sent {result.points_sent} metric points a trial left in {path}", flush=True)
        return True

    def sync_command(self) -> str:
        """The `prefsweep mlflow-sync` that sends the trials' and the parent's spools (the parent's last)."""
        dirs = [self.output_dir]
        if not self.where.resolve().is_relative_to(self.output_dir.resolve()):
            dirs.append(self.where)
        return "prefsweep mlflow-sync " + " ".join(shlex.quote(str(d)) for d in dirs)
