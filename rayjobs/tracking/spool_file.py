"""The spool file between a run's MLflow callback and the tracking store: `<output_dir>/mlflow_spool.jsonl`,
one JSON object a line.

Every param, tag, metric point, artifact list and the final status is an *item* (`op` one of ITEM_OPS) with a
sequence number; notes record the run's id once created (`run`), the last item that reached the store
(`sent`) and items the store refused for good (`dropped`). A line torn by a crash mid-write is skipped on
reading: the items before it are intact. The sender and the replay are in `rayjobs.tracking.spool` and
`rayjobs.tracking.sync`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("prefsweep.mlflow")

SPOOL_NAME = "mlflow_spool.jsonl"
SPOOL_GLOB = "mlflow_spool*.jsonl"
# Sent in order; "run"/"sent"/"dropped" are notes. `outputs`: a trial's table and dataset inputs
# (`rayjobs.tracking.trial_outputs`); `leaderboard`: a sweep parent's (`rayjobs.tracking.parent_run`).
ITEM_OPS = ("open", "metrics", "tags", "artifacts", "outputs", "leaderboard", "end")


def metric_points(item: dict) -> int:
    return len(item["metrics"]) if item["op"] == "metrics" else 0


@dataclass
class SpoolState:
    """What a spool file says: the run it belongs to, its items, and how far delivery got."""

    path: Path
    header: dict = field(default_factory=dict)  # the last "open" item
    run_id: str | None = None
    items: list[dict] = field(default_factory=list)
    sent_upto: int = 0  # every item with seq <= this reached the store or was refused
    dropped: list[dict] = field(default_factory=list)
    last_timestamp: int = 0

    @classmethod
    def load(cls, path: Path) -> SpoolState:
        state = cls(Path(path))
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a crash mid-write: the items before it are intact
                continue
            op = record.get("op")
            if op in ITEM_OPS:
                state.items.append(record)
                if op == "open":
                    state.header = record
                    state.run_id = state.run_id or record.get("run_id")
                for _key, _value, ts, _step in record.get("metrics", ()):
                    state.last_timestamp = max(state.last_timestamp, ts)
            elif op == "run":
                state.run_id = record["run_id"]
            elif op == "sent":
                state.sent_upto = max(state.sent_upto, record["upto"])
            elif op == "dropped":
                state.dropped.append(record)
        return state

    @property
    def next_seq(self) -> int:
        return self.items[-1]["seq"] + 1 if self.items else 1

    def unsent(self) -> list[dict]:
        return [item for item in self.items if item["seq"] > self.sent_upto]

    def ended(self) -> str | None:
        """The status the run was ended with since its last open, or None."""
        for item in reversed(self.items):
            if item["op"] in ("end", "open"):
                return item.get("status") if item["op"] == "end" else None
        return None


def _identity(header: dict) -> tuple:
    experiment = header.get("experiment_id") or f"name:{header.get('experiment_name')}"
    return (header.get("tracking_uri"), experiment, header.get("run_name"), header.get("parent_run_id"))


class Spool:
    """The append-only file: one JSON object a line, written with one `write` (O_APPEND) so the sender's
    markers and the training thread's items never interleave within a line."""

    def __init__(self, state: SpoolState):
        self.state = state
        self.path = state.path
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, output_dir: Path, header: dict, *, reopen: bool = False) -> Spool:
        """The spool of `output_dir`, resumed when it belongs to the same run and that run has not ended, or
        ended FAILED in an earlier attempt of the same `fit()` (header `invocation`: a worker group Ray Train
        restarted, or a trial `--resume` continued, whose rank 0 ended the run as its peers died), or
        `reopen` (a sweep's parent run on `--resume`: its items, the KILLED end included, stay in order
        before the new ones); otherwise a fresh one (an old spool with unsent items is moved aside for
        `mlflow-sync`). A header `spool_id` names the run's marker (a sweep's id) instead of a random one."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / SPOOL_NAME
        state = SpoolState.load(path) if path.is_file() else SpoolState(path)
        given = header.get("run_id")
        same = (
            state.items
            and (not state.ended() or reopen
                 or (state.ended() == "FAILED" and header.get("invocation") is not None
                     and header.get("invocation") == state.header.get("invocation")))
            and _identity(state.header) == _identity(header)
            and (given is None or given == (state.header.get("run_id") or state.run_id))
            and header.get("spool_id") in (None, state.header.get("spool_id"))
        )
        if state.items and not same:
            if state.unsent():
                n = 1
                while (output_dir / f"mlflow_spool.{n}.jsonl").exists():
                    n += 1
                path.rename(output_dir / f"mlflow_spool.{n}.jsonl")
                logger.warning("MLflow: unsent items of an earlier run moved to %s (replay: prefsweep "
                               "mlflow-sync %s)", output_dir / f"mlflow_spool.{n}.jsonl", output_dir)
            else:
                path.unlink()
            state = SpoolState(path)
        spool = cls(state)
        spool_id = header.get("spool_id") or state.header.get("spool_id") or uuid.uuid4().hex
        spool.append({**header, "op": "open", "spool_id": spool_id})
        return spool

    def _write(self, record: dict, *, sync: bool) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd < 0:
                return
            os.write(self._fd, line)
            if sync:
                os.fsync(self._fd)

    def append(self, record: dict) -> dict:
        """Give `record` the next sequence number, write and fsync it; returns the item."""
        with self._lock:
            item = {"seq": self.state.next_seq, **record}
            self.state.items.append(item)
            if item["op"] == "open":
                self.state.header = item
        self._write(item, sync=True)
        return item

    def mark_run(self, run_id: str) -> None:
        self.state.run_id = run_id
        self._write({"op": "run", "run_id": run_id}, sync=True)

    def mark_sent(self, upto: int) -> None:
        self.state.sent_upto = max(self.state.sent_upto, upto)
        self._write({"op": "sent", "upto": upto}, sync=False)  # lost markers only cost a deduped resend

    def mark_dropped(self, item: dict, err: BaseException) -> None:
        note = {"op": "dropped", "seq": item["seq"], "item": item["op"], "error": str(err)[:500]}
        self.state.dropped.append(note)
        self._write(note, sync=False)
        self.mark_sent(item["seq"])

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
