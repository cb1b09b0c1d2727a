"""What a sweep keeps in its Tune experiment dir (`<storage>/<name>`, a local path or a cloud URI) for
`prefsweep sweep --resume`: the MLflow parent run record, and which `fit()` wrote a trial's latest checkpoint."""

from __future__ import annotations

import json
import os

PARENT_RUN_FILE = "prefsweep_parent_run.json"
"""In the sweep's experiment dir: the MLflow parent run a `--resume` reattaches to (`run_id`, or only the
`sweep_id` its spool marks it with while the store has not created it yet), its store and experiment."""


def _filesystem(path: str):
    """(pyarrow filesystem, path in it) for a local path or a cloud URI."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _read_text(path: str) -> str | None:
    import pyarrow.fs

    fs, where = _filesystem(path)
    if fs.get_file_info(where).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(where) as f:
        return f.read().decode()


def write_parent_run(path: str, record: dict) -> None:
    """Write `<experiment dir>/prefsweep_parent_run.json` atomically (a temp file, then a rename)."""
    text = json.dumps(record, indent=1)
    fs, where = _filesystem(f"{path.rstrip('/')}/{PARENT_RUN_FILE}")
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    tmp = f"{where}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, where)  # a rename on local disks; object stores write whole objects anyway


def read_parent_run(path: str) -> dict | None:
    text = _read_text(f"{path.rstrip('/')}/{PARENT_RUN_FILE}")
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    # `sweep_id` alone: the first driver spooled its parent run while the store was down (rayjobs.sweep_parent)
    return record if isinstance(record, dict) and (record.get("run_id") or record.get("sweep_id")) else None


def previous_invocation(train_run_path: str) -> str | None:
    """The `fit()` id written into the latest checkpoint of the Ray Train run at `train_run_path`.

    The workers resume only from checkpoints of their own `fit()` (`rayjobs.worker._resume_checkpoint`);
    a restored trial's new `fit()` takes over that id, so its workers resume from the checkpoint Ray
    Train restores from the run's snapshot. None: the run has no checkpoint (the trial starts over).
    """
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    from rayjobs.worker import INVOCATION_FILE

    text = _read_text(f"{train_run_path.rstrip('/')}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}")
    if text is None:
        return None
    try:
        latest = (json.loads(text).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, AttributeError):
        return None
    if not latest:
        return None
    return _read_text(f"{train_run_path.rstrip('/')}/{latest}/{INVOCATION_FILE}")
