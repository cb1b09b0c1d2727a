"""Where cache entries live: `CacheStorage`, the interface the build and the readers use, and
`LocalCacheStorage`, a directory per key on a local or shared filesystem.

An entry is `<key>/{train,eval}.parquet` plus `<key>/manifest.json` (key fields, rows and sha256 of each
file). Readers see a whole entry or none: it is written into a temp directory and renamed into place.
`trainer.ref_cache.fs_storage.ArrowCacheStorage` implements the same methods on `pyarrow.fs` (object
stores), where a manifest written last plays the rename's part. A build split across workers writes
shards (`write_shard`) and one `commit` makes them an entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.atomic_write import write_atomic
from trainer.data.collator import reference_column_names
from trainer.ref_cache.info import CacheInvalid, say

MANIFEST = "manifest.json"


class CacheStorage(Protocol):
    """A keyed store of cache entries; every method names the entry by its key."""

    def location(self, key: str) -> Path | str:
        """Where the entry of `key` is (or would be): shown to users, recorded in `CacheInfo.path`."""

    def has_entries(self) -> bool:
        """Whether any entry exists (cheap: lets a run without a cache skip computing its key)."""

    def read(self, key: str, fields: dict[str, Any], rows: dict[str, int]) -> dict[str, pa.Table]:
        """The tables of a valid entry; FileNotFoundError if there is none, CacheInvalid if it must not be read."""

    def write(self, key: str, fields: dict[str, Any], tables: dict[str, pa.Table], extra: dict) -> Path:
        """Store an entry whole (a valid one already there is kept); its location."""

    def write_shard(self, key: str, split: str, shard: int, table: pa.Table) -> dict:
        """Store one shard of a build split across workers (rows of `split` in index order, `index` column
        global); a record for `commit`. Invisible to readers until then."""

    def commit(self, key: str, fields: dict[str, Any], shards: list[dict], extra: dict) -> Path | str:
        """Make the entry of `shards` (records of `write_shard`) visible whole, as `write` does."""


class LocalCacheStorage:
    """`CacheStorage` on a filesystem path: `<root>/<key>/`, renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def location(self, key: str) -> Path:
        return self.root / key

    def has_entries(self) -> bool:
        return any(self.root.glob(f"*/{MANIFEST}"))

    def read(self, key: str, fields: dict[str, Any], rows: dict[str, int]) -> dict[str, pa.Table]:
        return read_cache(self.root / key, fields, rows)

    def write(self, key: str, fields: dict[str, Any], tables: dict[str, pa.Table], extra: dict) -> Path:
        return write_cache(self.root, key, fields, tables, extra)

    def write_shard(self, key: str, split: str, shard: int, table: pa.Table) -> dict:
        """One shard of a build split across workers, kept under `<root>/.shards-<key>/` until `commit`."""
        target = self.root / f".shards-{key}" / f"{split}-{shard:05d}-{uuid.uuid4().hex[:12]}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        return {"split": split, "shard": shard, "name": target.name, "rows": table.num_rows}

    def commit(self, key: str, fields: dict[str, Any], shards: list[dict], extra: dict) -> Path:
        """The shards joined per split, in shard order, written as one entry (`write`); the shards removed."""
        folder = self.root / f".shards-{key}"
        parts: dict[str, list[pa.Table]] = {}
        for record in sorted(shards, key=lambda r: (r["split"], r["shard"])):
            parts.setdefault(record["split"], []).append(pq.read_table(folder / record["name"]))
        try:
            return self.write(key, fields, {s: pa.concat_tables(t).combine_chunks() for s, t in parts.items()}, extra)
        finally:
            for record in shards:
                (folder / record["name"]).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_files(manifest: Any, fields: dict[str, Any], rows: dict[str, int]) -> dict[str, Any]:
    """The manifest's per-split `files`, once its key fields are this run's and it lists exactly `rows`' splits
    (every storage backend's check before it reads a table)."""
    if not isinstance(manifest, dict) or manifest.get("key_fields") != fields:
        raise CacheInvalid("manifest key fields differ from this run's")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(rows):
        raise CacheInvalid(f"manifest lists splits {sorted(files or {})}, expected {sorted(rows)}")
    return files


def read_cache(path: Path, fields: dict[str, Any], rows: dict[str, int]) -> dict[str, pa.Table]:
    """The tables of a valid cache directory. Raises FileNotFoundError if there is none, CacheInvalid if
    it must not be read. Each file is read once: its bytes are checksummed, then parsed."""
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(path)
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as err:
        raise CacheInvalid(f"unreadable manifest ({err})") from None
    files = manifest_files(manifest, fields, rows)
    columns = ["index", *reference_column_names(fields["stage"])]
    tables = {}
    for split, expected in rows.items():
        entry = files[split]
        try:
            blob = (path / f"{split}.parquet").read_bytes()
        except OSError as err:
            raise CacheInvalid(f"{split}.parquet unreadable ({err})") from None
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise CacheInvalid(f"{split}.parquet fails its sha256 checksum")
        try:
            table = pq.read_table(pa.BufferReader(blob), columns=columns)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise CacheInvalid(f"{split}.parquet is not readable Parquet ({err})") from None
        if table.num_rows != expected or entry.get("rows") != expected:
            raise CacheInvalid(f"{split}.parquet has {table.num_rows} rows, the dataset {expected}")
        if not np.array_equal(table.column("index").to_numpy(), np.arange(expected)):
            raise CacheInvalid(f"{split}.parquet rows are not indexed 0..{expected - 1}")
        tables[split] = table
    return tables


def write_cache(root: Path, key: str, fields: dict[str, Any], tables: dict[str, pa.Table], extra: dict) -> Path:
    """Write the tables and manifest into a temp directory under `root`, fsync, rename to `root/key`.

    If `root/key` already exists (another builder won the race), a valid one is kept and ours dropped; an
    invalid one is moved aside and replaced.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    try:
        files = {}
        for split, table in tables.items():
            target = tmp / f"{split}.parquet"
            pq.write_table(table, target)
            with target.open("rb+") as handle:
                os.fsync(handle.fileno())
            files[split] = {"rows": table.num_rows, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
        manifest = {"key": key, "key_fields": fields, "files": files, **extra}
        write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        _fsync_dir(tmp)
        for _ in range(3):
            try:
                os.rename(tmp, final)
                _fsync_dir(root)
                return final
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            try:
                read_cache(final, fields, {split: t.num_rows for split, t in tables.items()})
                say("reference cache %s was completed by another builder; keeping it", final)
                return final
            except FileNotFoundError:
                continue
            except CacheInvalid:
                trash = root / f".trash-{key[:16]}-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(final, trash)
                except FileNotFoundError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
        raise OSError(f"could not move the reference cache into {final}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
