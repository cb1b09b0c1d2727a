"""The reference cache on `pyarrow.fs` (`trainer/ref_cache/fs_storage.py`), against a local directory
(`file://`) and a bucket of a real S3 endpoint (moto_server on 127.0.0.1), plus the local backend's shards.

- Round trip: tables written as shards come back equal, row for row, once the manifest is in; every
  shard's sha256 in the manifest is the sha256 of the object's bytes.
- Partial write invisible: shards without a manifest are a miss (FileNotFoundError), never a cache.
- A shard failing its checksum, a manifest of other key fields, or rows the dataset does not have are
  CacheInvalid; a rebuild replaces the entry and deletes the shards the bad manifest named.
- Of two builders the first manifest stays; the second's shards are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from tests.conftest import REPO
from tests.s3_server import S3Server
from trainer.ref_cache import CacheInvalid, LocalCacheStorage
from trainer.ref_cache.fs_storage import ArrowCacheStorage, storage_for

FIELDS = {"format": 1, "stage": "dpo", "template": "default", "cutoff_len": 96}
KEY = "k" * 64


def dpo_table(start: int, stop: int) -> pa.Table:
    """Rows start..stop-1 of a made-up dpo cache: sums -i/4 and -i/8, counts i+1 and i+2."""
    i = np.arange(start, stop)
    return pa.table({"index": i.astype(np.int64), "ref_chosen_logps": -i / 4.0, "ref_chosen_count": i + 1,
                     "ref_rejected_logps": -i / 8.0, "ref_rejected_count": i + 2})


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path) -> ArrowCacheStorage:
    if request.param == "file":
        return storage_for(f"file://{tmp_path}/ref_cache")
    bucket = request.getfixturevalue("s3").make_bucket(f"cache-{tmp_path.name.lower().replace('_', '-')[-40:]}")
    return storage_for(f"{bucket}/sweeps/ref_cache")


def objects(storage: ArrowCacheStorage) -> dict[str, bytes]:
    """Every object under the entry of KEY -> its bytes."""
    infos = storage.fs.get_file_info(pafs.FileSelector(f"{storage.base}/{KEY}", allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with storage.fs.open_input_stream(info.path) as f:
                out[info.path.rsplit("/", 1)[1]] = f.read()
    return out


def build(storage, shards=((0, 3), (3, 7)), eval_rows=2) -> list[dict]:
    records = [storage.write_shard(KEY, "train", i, dpo_table(a, b)) for i, (a, b) in enumerate(shards)]
    return records + [storage.write_shard(KEY, "eval", 0, dpo_table(0, eval_rows))]


def test_round_trip_and_partial_write_invisible(storage):
    assert isinstance(storage, ArrowCacheStorage)
    assert not storage.has_entries()
    records = build(storage)
    # every shard is written, no manifest yet: a miss, not a cache
    with pytest.raises(FileNotFoundError):
        storage.read(KEY, FIELDS, {"train": 7, "eval": 2})
    assert not storage.has_entries()
    location = storage.commit(KEY, FIELDS, list(reversed(records)), {"reference_forwards": 9})
    assert location == storage.location(KEY) and location.endswith(f"/ref_cache/{KEY}")
    assert storage.has_entries()
    tables = storage.read(KEY, FIELDS, {"train": 7, "eval": 2})
    assert tables["train"].equals(dpo_table(0, 7)) and tables["eval"].equals(dpo_table(0, 2))
    stored = objects(storage)
    manifest = json.loads(stored["manifest.json"])
    assert manifest["reference_forwards"] == 9 and manifest["key_fields"] == FIELDS
    assert [s["rows"] for s in manifest["files"]["train"]["shards"]] == [3, 4]  # shard order, not commit order
    for split in ("train", "eval"):
        for shard in manifest["files"][split]["shards"]:
            assert hashlib.sha256(stored[shard["name"]]).hexdigest() == shard["sha256"]
    assert len(stored) == 4  # 3 shards + the manifest


def test_corrupt_shard_is_invalid_and_a_rebuild_replaces_it(storage):
    rows = {"train": 7, "eval": 2}
    storage.commit(KEY, FIELDS, build(storage), {})
    first = json.loads(objects(storage)["manifest.json"])
    bad = first["files"]["train"]["shards"][1]["name"]
    blob = bytearray(objects(storage)[bad])
    blob[len(blob) // 2] ^= 0x01
    with storage.fs.open_output_stream(f"{storage.base}/{KEY}/{bad}") as f:
        f.write(bytes(blob))
    with pytest.raises(CacheInvalid, match=f"shard {bad} fails its sha256 checksum"):
        storage.read(KEY, FIELDS, rows)
    with pytest.raises(CacheInvalid, match="key fields differ"):
        storage.read(KEY, {**FIELDS, "cutoff_len": 97}, rows)
    # the rebuild (one shard per split, as `prepare` writes) replaces it; the old shards are gone
    storage.write(KEY, FIELDS, {"train": dpo_table(0, 7), "eval": dpo_table(0, 2)}, {})
    assert storage.read(KEY, FIELDS, rows)["train"].equals(dpo_table(0, 7))
    names = set(objects(storage))
    old = {s["name"] for f in first["files"].values() for s in f["shards"]}
    assert not names & old and len(names) == 3


def test_missing_rows_between_shards_are_invalid(storage):
    records = build(storage, shards=((0, 3), (4, 7)))  # example 3 in no shard
    storage.commit(KEY, FIELDS, records, {})
    with pytest.raises(CacheInvalid, match="train shards hold 6 rows, the dataset 7"):
        storage.read(KEY, FIELDS, {"train": 7, "eval": 2})
    storage.write(KEY, FIELDS, {"train": dpo_table(1, 8), "eval": dpo_table(0, 2)}, {})  # rows 1..7, not 0..6
    with pytest.raises(CacheInvalid, match="train shard rows are not indexed 0..6"):
        storage.read(KEY, FIELDS, {"train": 7, "eval": 2})


def test_second_builder_keeps_the_first_entry(storage):
    first = build(storage)
    second = build(storage)
    storage.commit(KEY, FIELDS, first, {"builder": 1})
    storage.commit(KEY, FIELDS, second, {"builder": 2})
    stored = objects(storage)
    assert json.loads(stored["manifest.json"])["builder"] == 1
    assert set(stored) == {"manifest.json", *(r["name"] for r in first)}


def test_local_storage_shards_commit_to_one_entry(tmp_path):
    """The rename-based local backend takes shards too: one Parquet file per split, the shards removed."""
    storage = LocalCacheStorage(tmp_path)
    records = build(storage)
    with pytest.raises(FileNotFoundError):
        storage.read(KEY, FIELDS, {"train": 7, "eval": 2})
    assert storage.commit(KEY, FIELDS, records, {}) == tmp_path / KEY
    assert storage.read(KEY, FIELDS, {"train": 7, "eval": 2})["train"].equals(dpo_table(0, 7))
    assert sorted(p.name for p in (tmp_path / KEY).iterdir()) == ["eval.parquet", "manifest.json", "train.parquet"]
    assert not list((tmp_path / f".shards-{KEY}").iterdir())


def test_cache_root_of_a_bucket_storage_path(tmp_path):
    """storage_path s3://... and no ref_cache_dir: the cache lives in the bucket; a URI ref_cache_dir is
    kept as given; a scheme pyarrow cannot open is one error naming the key."""
    from trainer.config import load_config
    from trainer.errors import ConfigError
    from trainer.ref_cache import cache_root

    raw = {"model_name_or_path": "m", "stage": "dpo", "dataset": "dpo_en_demo", "dataset_dir": str(REPO / "data"),
           "output_dir": str(tmp_path), "do_train": True}
    assert cache_root(load_config({**raw, "ray_storage_path": "s3://b/sweeps/"})) == "s3://b/sweeps/ref_cache"
    assert cache_root(load_config({**raw, "ref_cache_dir": "gs://b/c"})) == "gs://b/c"
    assert cache_root(load_config({**raw, "ray_storage_path": str(tmp_path)})) == tmp_path.resolve() / "ref_cache"
    with pytest.raises(ConfigError, match="ref_cache_dir 'ftp://h/c': a path, or a URI of one of s3, gs"):
        load_config({**raw, "ref_cache_dir": "ftp://h/c"})
