"""`ArrowCacheStorage`: cache entries on any `pyarrow.fs` filesystem (`s3://`, `gs://`, `file://`, ...), so
trials on any node read them without a shared filesystem; `storage_for(root)` picks the backend of a root.

An object store has no directory rename, so the manifest, written last in one PUT, plays its part:

    <root>/<key>/train-00000-<token>.parquet   shards, each a contiguous run of example indices
    <root>/<key>/eval-00000-<token>.parquet
    <root>/<key>/manifest.json                 key fields; per split its rows and shards (name, rows, sha256)

Shards without a manifest are invisible (a build that died half-way, or one still running); a reader
trusts only the shards its manifest names, each checked against its sha256. Shard names carry a random
token, so concurrent builders never overwrite each other's files; the first manifest in place is kept. A
manifest that fails its checks is replaced, and the shards it named are deleted after the new one is in.
Credentials and endpoints come from the environment as for every pyarrow (and Ray) client: AWS_* and
AWS_ENDPOINT_URL for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.data.collator import reference_column_names
from trainer.ref_cache.info import CacheInvalid, say
from trainer.ref_cache.storage import MANIFEST, LocalCacheStorage, manifest_files


def is_uri(root: str | Path) -> bool:
    return "://" in str(root)


def storage_for(root: str | Path):
    """The `CacheStorage` of a cache root: `ArrowCacheStorage` for a URI, `LocalCacheStorage` for a path."""
    return ArrowCacheStorage(str(root)) if is_uri(root) else LocalCacheStorage(Path(root))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class ArrowCacheStorage:
    """`CacheStorage` on a `pyarrow.fs` filesystem named by a URI; entries are sharded, the manifest last."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowException, ValueError) as err:
            raise ValueError(f"reference cache root {uri!r}: not a filesystem pyarrow can open ({err})") from None
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def location(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _path(self, key: str, name: str = "") -> str:
        return f"{self.base}/{key}/{name}" if name else f"{self.base}/{key}"

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write_bytes(self, path: str, blob: bytes) -> None:
        """One whole object; on a local disk a temp file renamed into place (an object PUT is atomic already)."""
        target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if self.local else path
        if self.local:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(target) as f:
            f.write(blob)
        if self.local:
            self.fs.move(target, path)

    def has_entries(self) -> bool:
        try:
            entries = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except OSError:
            return False
        manifests = [f"{e.path}/{MANIFEST}" for e in entries if e.type == pafs.FileType.Directory]
        return any(i.type == pafs.FileType.File for i in self.fs.get_file_info(manifests)) if manifests else False

    def _manifest(self, key: str) -> dict:
        path = self._path(key, MANIFEST)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(self.location(key))
        try:
            manifest = json.loads(self._read_bytes(path))
        except (OSError, ValueError) as err:
            raise CacheInvalid(f"unreadable manifest ({err})") from None
        if not isinstance(manifest, dict):
            raise CacheInvalid("manifest is not a JSON object")
        return manifest

    def read(self, key: str, fields: dict[str, Any], rows: dict[str, int]) -> dict[str, pa.Table]:
        files = manifest_files(self._manifest(key), fields, rows)
        columns = ["index", *reference_column_names(fields["stage"])]
        tables = {}
        for split, expected in rows.items():
            parts = []
            for shard in files[split].get("shards") or []:
                name = shard.get("name", "")
                try:
                    blob = self._read_bytes(self._path(key, name))
                except OSError as err:
                    raise CacheInvalid(f"shard {name} unreadable ({err})") from None
                if hashlib.sha256(blob).hexdigest() != shard.get("sha256"):
                    raise CacheInvalid(f"shard {name} fails its sha256 checksum")
                try:
                    parts.append(pq.read_table(pa.BufferReader(blob), columns=columns))
                except (pa.ArrowException, OSError, ValueError) as err:
                    raise CacheInvalid(f"shard {name} is not readable Parquet ({err})") from None
            table = pa.concat_tables(parts) if parts else None
            got = table.num_rows if table is not None else 0
            if got != expected or files[split].get("rows") != expected:
                raise CacheInvalid(f"{split} shards hold {got} rows, the dataset {expected}")
            if not np.array_equal(table.column("index").to_numpy(), np.arange(expected)):
                raise CacheInvalid(f"{split} shard rows are not indexed 0..{expected - 1}")
            tables[split] = table.combine_chunks()
        return tables

    def write_shard(self, key: str, split: str, shard: int, table: pa.Table) -> dict:
        """Upload one shard (rows of `split` in index order); the record `commit` lists in the manifest."""
        blob = parquet_bytes(table)
        name = f"{split}-{shard:05d}-{uuid.uuid4().hex[:12]}.parquet"
        self._write_bytes(self._path(key, name), blob)
        return {"split": split, "shard": shard, "name": name, "rows": table.num_rows,
                "sha256": hashlib.sha256(blob).hexdigest()}

    def commit(self, key: str, fields: dict[str, Any], shards: list[dict], extra: dict) -> str:
        """Write the manifest naming `shards` (from `write_shard`), unless a valid entry is already there:
        then ours is dropped. Shards of an invalid manifest replaced here are deleted after."""
        rows: dict[str, int] = {}
        files: dict[str, dict] = {}
        for record in sorted(shards, key=lambda r: (r["split"], r["shard"])):
            entry = files.setdefault(record["split"], {"rows": 0, "shards": []})
            entry["rows"] += record["rows"]
            entry["shards"].append({k: record[k] for k in ("name", "rows", "sha256")})
            rows[record["split"]] = entry["rows"]
        stale: list[str] = []
        try:
            self.read(key, fields, rows)
            say("reference cache %s was completed by another builder; keeping it", self.location(key))
            self._delete(key, [s["name"] for s in shards])
            return self.location(key)
        except FileNotFoundError:
            pass
        except CacheInvalid:
            try:
                old = self._manifest(key).get("files") or {}
                stale = [s.get("name", "") for f in old.values() if isinstance(f, dict) for s in f.get("shards") or []]
            except (CacheInvalid, FileNotFoundError, AttributeError):
                pass
        manifest = {"key": key, "key_fields": fields, "files": files, **extra}
        self._write_bytes(self._path(key, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        self._delete(key, [name for name in stale if name and name not in {s["name"] for s in shards}])
        return self.location(key)

    def write(self, key: str, fields: dict[str, Any], tables: dict[str, pa.Table], extra: dict) -> str:
        return self.commit(key, fields, [self.write_shard(key, split, 0, t) for split, t in tables.items()], extra)

    def _delete(self, key: str, names: list[str]) -> None:
        for name in names:
            try:
                self.fs.delete_file(self._path(key, name))
            except OSError:  # already gone, or not ours to delete: a leftover costs only space
                pass
