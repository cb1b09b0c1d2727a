"""`prefsweep mlflow-sync OUTPUT_DIR ...` (`python -m rayjobs.tracking.sync`): send what runs could not send
while the tracking server was down, from the spool files (`rayjobs.tracking.spool_file`) in their output dirs.

Replays never duplicate: a metric point keeps the timestamp it was spooled with, and points already in the
run's history are skipped. Not safe to run on a directory whose run is still training.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rayjobs.tracking import spool as mlflow_spool
from rayjobs.tracking.client import fail_fast_http, is_permanent, short_error
from rayjobs.tracking.spool import Delivery
from rayjobs.tracking.spool_file import SPOOL_GLOB, SPOOL_NAME, Spool, SpoolState


@dataclass
class SyncResult:
    path: Path
    run_id: str | None
    items: int = 0
    points_sent: int = 0
    points_present: int = 0
    error: str | None = None


def sync_spool(path: Path, tracking_uri: str | None = None, timeout_s: float = 60.0) -> SyncResult:
    """Send one spool's unsent items, skipping points the run already has; retries transient failures
    for up to `timeout_s`. `tracking_uri` overrides the spool's when the server moved (same store)."""
    state = SpoolState.load(path)
    result = SyncResult(Path(path), state.run_id)
    unsent = state.unsent()
    if not unsent:
        return result
    uri = tracking_uri or state.header["tracking_uri"]
    fail_fast_http(uri)
    spool = Spool(state)
    delivery = Delivery(spool, uri, dedupe=True)
    deadline = time.monotonic() + timeout_s
    try:
        for item in unsent:  # one by one: a refused item is dropped alone
            for attempt in itertools.count():
                try:
                    delivery.deliver([item])
                    spool.mark_sent(item["seq"])
                    result.items += 1
                    break
                except Exception as err:  # noqa: BLE001
                    if is_permanent(err) and item["op"] != "open":
                        spool.mark_dropped(item, err)
                        break
                    if is_permanent(err) or time.monotonic() > deadline:
                        result.error = f"{item['op']} (item {item['seq']}) failed: {short_error(err)}"
                        return result
                    time.sleep(mlflow_spool.BACKOFF_S[min(attempt, len(mlflow_spool.BACKOFF_S) - 1)])
    finally:
        spool.close()
        result.run_id = delivery.run_id
        result.points_sent, result.points_present = delivery.points_sent, delivery.points_present
    return result


def find_spools(paths: list[str]) -> list[Path]:
    """Spool files in/under each path (a run's output dir, or a sweep's root), oldest first."""
    found: list[Path] = []
    for p in map(Path, paths):
        found += [p] if p.is_file() else sorted(p.rglob(SPOOL_GLOB), key=lambda f: (f.parent, f.stat().st_mtime))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefsweep mlflow-sync",
        description="Send to MLflow what runs could not send while the tracking server was down (the "
        f"{SPOOL_NAME} files in each output dir, searched recursively). Safe to repeat: points already in "
        "MLflow are not sent again. Do not run it on a run that is still training.",
    )
    parser.add_argument("paths", nargs="+", metavar="OUTPUT_DIR", help="a run's output dir or a sweep's root")
    parser.add_argument("--tracking-uri", help="the server's address, if it moved (it must hold the same store)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to keep retrying a failing store")
    args = parser.parse_args(argv)
    # A sweep's parent last: its leaderboard links and reads the trial runs the other spools create.
    spools = sorted(find_spools(args.paths), key=lambda p: SpoolState.load(p).header.get("kind") == "sweep")
    if not spools:
        print(f"prefsweep mlflow-sync: no {SPOOL_NAME} under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    failed = 0
    for path in spools:
        result = sync_spool(path, args.tracking_uri, args.timeout)
        if result.error:
            failed += 1
            print(f"{path}: NOT synced, {result.error} (sent {result.items} items before)", file=sys.stderr)
        elif result.items == 0:
            print(f"{path}: up to date (run {result.run_id})")
        else:
            print(f"{path}: run {result.run_id}: sent {result.items} items, {result.points_sent} metric points "
                  f"({result.points_present} already in MLflow)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
