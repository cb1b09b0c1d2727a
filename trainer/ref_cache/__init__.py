"""Shared reference log-prob cache: one reference forward per example, reused by every run with the same key.

A reference-based loss (sigmoid, hinge, ipo, kto_pair, kto) needs the reference model's log-probs of every
example, and they never change during training: the reference is frozen. Trainers elsewhere recompute them
every step of every run, i.e. one extra forward per step, a second copy of the weights for full
fine-tuning, and the same numbers again in each trial of a sweep. Here they are computed once, stored per
example as the summed log-prob and the response token count (averaged variants are sum / count, as
`SequenceLogps.mean`), and joined to the dataset as columns; the trainer then builds no reference at all.

Layout under the cache root (`ref_cache_dir`; default `<ray.storage_path>/ref_cache`, in a sweep
`<storage_path>/ref_cache`, else `~/.cache/prefsweep/ref_cache`), for a local root (a URI root, `s3://`
or `gs://`, holds sharded Parquet and a manifest written last: `fs_storage.ArrowCacheStorage`)::

    <key>/train.parquet   index, ref_chosen_logps, ref_chosen_count, ref_rejected_logps, ref_rejected_count
    <key>/eval.parquet    (kto: index, ref_logps, ref_count, ref_kl_logps, ref_kl_count)
    <key>/manifest.json   key fields, rows and sha256 of each Parquet file, build time, forwards
    .hashes/              sha256 of weight / tokenizer files, keyed by (path, size, mtime, inode)

`<key>` is the sha256 of everything that changes the numbers (`key_fields`): the reference weights
(resolved path, content hash of its safetensors and config.json, revision, dtype), the tokenizer files,
the template, the dataset fingerprint (token content of train and eval, in order, so rows join by index),
cutoff_len, max_samples, the val_size split and its seed, the stage and FORMAT_VERSION. A directory whose
manifest does not hold exactly these fields, whose files fail their checksum, do not parse or have the
wrong row count is never read; with a build allowed it is replaced. Builds write into a temp directory,
fsync, and rename it into place, so readers see a whole cache or none; of two concurrent builders the
second finds the first's cache in place and keeps it. A sweep driver's build is split into shards, one
Ray task each (`shards.py`, `rayjobs.ref_cache_build`), each example in one shard, committed last.

`precompute_ref` (config): `never` -- no cache, the reference runs every step; `always` -- build or reuse
the cache before training; `auto` (default) -- read a cache that exists for the key, never build one. A
sweep driver calls `ensure_reference_cache(cfg)` once per distinct key before its trials start, so its
`auto` trials all hit; a single `auto` run costs at most a key computation (nothing when the cache root is
empty). Reference-free losses (orpo, simpo) never touch the cache.

Cached log-probs come from the reference in the weights dtype, in eval mode, without autocast -- as the
frozen copy runs in the trainer -- through the trainer's own forward (`response_logps`) and collator. In a
training process whose reference is the starting policy (no `ref_model`) that reference is the freshly
loaded policy itself (LoRA: adapters disabled; full: the initial weights), so the process holds one copy
of the weights; the sweep driver and a separate `ref_model` load it on their own.
"""

from trainer.ref_cache.build import (
    attach,
    ensure_reference_cache,
    ensure_reference_caches,
    prepare,
    reference_tables,
)
from trainer.ref_cache.info import CacheInfo, CacheInvalid
from trainer.ref_cache.key import cache_root, file_sha256, key_fields, key_hash, reference_cache_identity
from trainer.ref_cache.storage import CacheStorage, LocalCacheStorage, read_cache, write_cache

__all__ = [
    "CacheInfo", "CacheInvalid", "CacheStorage", "LocalCacheStorage", "attach", "cache_root",
    "ensure_reference_cache", "ensure_reference_caches", "file_sha256", "key_fields", "key_hash", "prepare",
    "read_cache", "reference_cache_identity", "reference_tables", "write_cache",
]
