"""Shared reference log-prob cache: one reference forward per example, reused by every run with the same key.

A reference-based loss (sigmoid, hinge, ipo, kto_pair, kto) needs the reference model's log-probs of every
example, and they never change during training: the reference is frozen. Trainers elsewhere recompute them
every step of every run, i.e. one extra forward per step, a second copy of the weights for full
fine-tuning, and the same numbers again in each trial of a sweep. Here they are computed once, stored per
example as the summed log-prob and the response token count (averaged variants are sum / count, as
`SequenceLogps.mean`), and joined to the dataset as columns; the trainer then builds no reference at all.

Layout under the cache root (`ref_cache_dir`; default `<ray.storage_path>/ref_cache`, else
`~/.cache/prefsweep/ref_cache`)::

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
second finds the first's cache in place and keeps it.

`precompute_ref` (config): `never` -- no cache, the reference runs every step; `always` -- build or reuse
the cache before training; `auto` (default) -- read a cache that exists for the key, never build one. A
sweep driver calls `ensure_reference_cache(cfg)` once per distinct key before its trials start, so its
`auto` trials all hit; a single `auto` run costs at most a key computation (nothing when the cache root is
empty). Reference-free losses (orpo, simpo) never touch the cache.

Cached log-probs come from a reference loaded on its own in the weights dtype, in eval mode, without
autocast -- as the frozen copy runs in the trainer -- through the trainer's own forward
(`response_logps`) and collator.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trainer.atomic_write import write_atomic
from trainer.config import TrainConfig
from trainer.data import PreferenceData, make_collator
from trainer.data.collator import REFERENCE_COLUMNS, reference_column_names
from trainer.logps import response_mask
from trainer.losses import get_loss, ld_weighted_logps

logger = logging.getLogger("prefsweep.ref_cache")

FORMAT_VERSION = 1
SPLITS = ("train", "eval")
MANIFEST = "manifest.json"
WEIGHT_PATTERNS = ("*.safetensors", "config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)


@dataclass
class CacheInfo:
    """What happened to the reference cache of one config (also the MLflow tags' source)."""

    key: str = ""
    """sha256 of the key fields; empty when no key was computed."""
    path: Path | None = None
    """The cache directory (<root>/<key>)."""
    hit: bool = False
    """An existing, valid cache was read."""
    build_seconds: float = 0.0
    """Wall time of building it here (model load, forwards, write); 0 on a hit."""
    rows: dict[str, int] = field(default_factory=dict)
    """Examples per split in the cache."""
    status: str = "off"
    """hit (read an existing cache) | miss (built it here) | off (no cache: never, reference-free, or auto without one)."""
    reason: str = ""
    """Why off, or why a cache was rebuilt."""
    reference_forwards: int = 0
    """Examples passed through the reference model by this call (one per example on a miss, 0 on a hit)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        return out

    def tags(self) -> dict[str, str]:
        """MLflow tags: prefsweep.ref_cache = hit|miss|off, prefsweep.ref_cache_build_s."""
        return {"prefsweep.ref_cache": self.status, "prefsweep.ref_cache_build_s": f"{self.build_seconds:.3f}"}


class CacheInvalid(Exception):
    """A cache directory exists but must not be read (key mismatch, checksum, unreadable, row count)."""


def _say(message: str, *args: Any, warn: bool = False) -> None:
    """Log to `prefsweep.ref_cache`; with no logging configured anywhere, print to stderr instead."""
    level = logging.WARNING if warn else logging.INFO
    if logger.isEnabledFor(level) and logger.hasHandlers():
        logger.log(level, message, *args)
    else:
        print("prefsweep: " + (message % args), file=sys.stderr, flush=True)


# ---- the key -------------------------------------------------------------------------------------------


def cache_root(cfg: TrainConfig) -> Path:
    """`ref_cache_dir`, else `<ray.storage_path>/ref_cache` for a filesystem storage path, else the user cache."""
    if cfg.finetuning.ref_cache_dir:
        return Path(cfg.finetuning.ref_cache_dir).expanduser().resolve()
    storage = cfg.ray.storage_path
    if storage and "://" not in storage:
        return Path(storage).expanduser().resolve() / "ref_cache"
    return Path("~/.cache/prefsweep/ref_cache").expanduser()


_HASH_MEMO: dict[tuple, str] = {}


def file_sha256(path: Path, root: Path) -> str:
    """sha256 of a file's content, remembered by (path, size, mtime_ns, inode) in memory and under
    `root/.hashes`, so a model's weights are read once, not once per run."""
    path = path.resolve()
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if stamp in _HASH_MEMO:
        return _HASH_MEMO[stamp]
    record = root / ".hashes" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(record.read_text())
        if tuple(saved["stamp"]) == stamp:
            _HASH_MEMO[stamp] = saved["sha256"]
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    _HASH_MEMO[stamp] = digest.hexdigest()
    write_atomic(record, json.dumps({"stamp": list(stamp), "sha256": digest.hexdigest()}).encode())
    return digest.hexdigest()


def _local_dir(name: str, revision: str, cache_dir: str | None) -> Path | None:
    """A local directory, or the hub snapshot already downloaded for (name, revision); None if neither."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser().resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded (or not a hub id): keyed by name and revision only
        return None


def _files_identity(directory: Path | None, patterns: tuple[str, ...], root: Path) -> dict[str, str]:
    if directory is None:
        return {}
    files = sorted({p for pattern in patterns for p in directory.glob(pattern) if p.is_file()})
    return {p.name: file_sha256(p, root) for p in files}


def key_fields(cfg: TrainConfig, data: PreferenceData, *, seed: int, root: Path) -> dict[str, Any]:
    """Everything the cached numbers depend on, as plain JSON values (the manifest stores them as is)."""
    from trainer.models import compute_dtype

    model, data_args = cfg.model, cfg.data
    ref_name = model.ref_model or model.model_name_or_path
    ref_dir = _local_dir(ref_name, model.model_revision, model.cache_dir)
    tok_dir = _local_dir(model.model_name_or_path, model.model_revision, model.cache_dir)
    weights = _files_identity(ref_dir, WEIGHT_PATTERNS, root)
    if not any(name.endswith(".safetensors") for name in weights):
        _say("reference %s: no local safetensors to hash; the cache key holds its name and revision only",
             ref_name, warn=True)
    val_size = float(data_args.val_size or 0.0)
    fields = {
        "format": FORMAT_VERSION,
        "stage": cfg.finetuning.stage,
        "reference": {
            "path": str(ref_dir) if ref_dir else ref_name,
            "revision": model.model_revision,
            "files": weights,
            "adapter": None,  # adapters-off LoRA references are the base weights; no pre-trained adapters yet
            "dtype": str(compute_dtype(cfg.training)),
            "trust_remote_code": model.trust_remote_code,
        },
        "tokenizer": {"path": str(tok_dir) if tok_dir else model.model_name_or_path,
                      "files": _files_identity(tok_dir, TOKENIZER_FILES, root)},
        "template": data_args.template,
        "dataset_fingerprint": data.fingerprint,
        "cutoff_len": data_args.cutoff_len,
        "max_samples": data_args.max_samples,
        "val_size": val_size,
        "split_seed": seed if val_size > 0 else None,
    }
    if cfg.finetuning.ld_alpha is not None:  # LD-DPO weights the reference's log-probs too
        fields["ld_alpha"] = cfg.finetuning.ld_alpha
    return json.loads(json.dumps(fields))  # exactly what a manifest reads back


def key_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# ---- reading and writing -------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    if not isinstance(manifest, dict) or manifest.get("key_fields") != fields:
        raise CacheInvalid("manifest key fields differ from this run's")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(rows):
        raise CacheInvalid(f"manifest lists splits {sorted(files or {})}, expected {sorted(rows)}")
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
                _say("reference cache %s was completed by another builder; keeping it", final)
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


# ---- computing -----------------------------------------------------------------------------------------


def _lengths(dataset, stage: str) -> np.ndarray:
    table = dataset.with_format("arrow")[:]
    names = ("chosen_input_ids", "rejected_input_ids") if stage == "dpo" else ("input_ids", "kl_input_ids")
    return np.maximum(*(pc.list_value_length(table.column(n)).to_numpy() for n in names))


@torch.no_grad()
def reference_tables(
    model: torch.nn.Module, data: PreferenceData, tokenizer: Any, *, stage: str, batch_size: int,
    device: torch.device, lean_head: bool = True, chunk_size: int | None = 1024, ld_alpha: float | None = None,
) -> tuple[dict[str, pa.Table], int]:
    """One reference forward per example of train and eval -> ({split: table}, examples forwarded).

    Batches of `batch_size` examples of similar length (longest first, so an out-of-memory shows at once),
    collated by the trainer's collator and run through the trainer's `response_logps`; rows go back to
    dataset order. Sums are float32 (float64 for float64 weights), stored as float64.
    """
    from trainer.preference_trainer import response_logps

    model.eval()
    collator = make_collator(tokenizer, stage=stage)
    blocks = REFERENCE_COLUMNS[stage]
    prefix = {"pair": "", "completion": "", "kl": "kl_"}
    tables, forwards = {}, 0
    for split in SPLITS:
        dataset = getattr(data, split)
        if dataset is None:
            continue
        n = len(dataset)
        out = {name: np.zeros(n, dtype=np.int64 if name.endswith("_count") else np.float64)
               for name in reference_column_names(stage)}
        order = np.argsort(-_lengths(dataset, stage), kind="stable")
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            columns = dataset[idx.tolist()]
            batch = collator([dict(zip(columns, values)) for values in zip(*columns.values())])
            for block, pairs in blocks.items():
                p = prefix[block]
                ids, mask, labels = (batch[p + k].to(device) for k in ("input_ids", "attention_mask", "labels"))
                if lean_head:
                    try:
                        logps = response_logps(model, ids, mask, labels, lean_head=True, chunk_size=chunk_size)
                    except ValueError as err:
                        _say("lean LM-head log-probs are off for the reference (%s); computing logits", err, warn=True)
                        lean_head = False
                if not lean_head:
                    logps = response_logps(model, ids, mask, labels, lean_head=False, chunk_size=chunk_size)
                sums = logps.sum
                if ld_alpha is not None and block == "pair":  # LD-DPO: the chosen/rejected pair's weighting
                    sums = ld_weighted_logps(logps.per_token, response_mask(labels), ld_alpha)
                sums, counts = sums.double().cpu().numpy(), logps.count.cpu().numpy()
                for group, (sum_name, count_name) in enumerate(pairs):
                    rows = slice(group * len(idx), (group + 1) * len(idx))
                    out[sum_name][idx], out[count_name][idx] = sums[rows], counts[rows]
            forwards += len(idx)
        tables[split] = pa.table({"index": np.arange(n, dtype=np.int64), **out})
    return tables, forwards


@contextlib.contextmanager
def _rng_untouched():
    """Restore Python's, numpy's and torch's (CPU and CUDA) global RNG states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---- the entry points ----------------------------------------------------------------------------------


def _off_reason(cfg: TrainConfig) -> str:
    if not get_loss(cfg.loss_name).needs_reference:
        return f"{cfg.loss_name} is reference-free"
    if cfg.finetuning.precompute_ref == "never":
        return "precompute_ref: never"
    if cfg.finetuning.sync_ref_model:
        return "sync_ref_model: the reference moves during training (TR-DPO), so no shared cache"
    return ""


def prepare(
    cfg: TrainConfig, data: PreferenceData, tokenizer: Any, *, seed: int, build: bool,
    device: torch.device | str | None = None,
) -> tuple[CacheInfo, dict[str, pa.Table] | None]:
    """Find (and with `build`, make) the reference cache of `cfg` and `data`: (info, tables or None).

    `build` False reads only an existing valid cache (precompute_ref auto). Never touches the cache for
    reference-free losses or precompute_ref never.
    """
    off = _off_reason(cfg)
    if off:
        if cfg.finetuning.sync_ref_model:
            _say("reference cache off: %s", off)
        return CacheInfo(reason=off), None
    root = cache_root(cfg)
    if not build and not any(root.glob(f"*/{MANIFEST}")):
        return CacheInfo(reason=f"precompute_ref: auto and no cache under {root}"), None
    fields = key_fields(cfg, data, seed=seed, root=root)
    key = key_hash(fields)
    path = root / key
    rows = {split: len(getattr(data, split)) for split in SPLITS if getattr(data, split) is not None}
    reason = ""
    try:
        tables = read_cache(path, fields, rows)
        _say("reference cache hit: %s (%s)", path, ", ".join(f"{s} {n}" for s, n in rows.items()))
        return CacheInfo(key=key, path=path, hit=True, rows=rows, status="hit"), tables
    except FileNotFoundError:
        pass
    except CacheInvalid as err:
        reason = f"rebuilt: {err}"
        _say("reference cache %s is not usable (%s); it is not read", path, err, warn=True)
    if not build:
        return CacheInfo(key=key, path=path, rows=rows, reason=reason or "precompute_ref: auto and no cache "
                         "for this key"), None

    from trainer.models import compute_dtype, load_causal_lm

    started = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    ref_name = cfg.model.ref_model or cfg.model.model_name_or_path
    _say("reference cache miss: computing reference log-probs of %s into %s", ref_name, path)
    batch_size = int(cfg.training.get("per_device_eval_batch_size") or 8)
    with _rng_untouched():  # a cached run must initialise the policy (LoRA A matrices) as an uncached one
        model = load_causal_lm(ref_name, cfg.model, compute_dtype(cfg.training)).to(device)
        tables, forwards = reference_tables(
            model, data, tokenizer, stage=cfg.finetuning.stage, batch_size=batch_size, device=device,
            lean_head=cfg.finetuning.lean_head, chunk_size=cfg.finetuning.logps_chunk_size,
            ld_alpha=cfg.finetuning.ld_alpha,
        )
        del model
    import transformers

    extra = {"reference_forwards": forwards, "created": time.time(),
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    write_cache(root, key, fields, tables, extra)
    seconds = time.perf_counter() - started
    _say("reference cache built in %.1fs: %d examples, one reference forward each", seconds, forwards)
    info = CacheInfo(key=key, path=path, rows=rows, status="miss", build_seconds=seconds, reason=reason,
                     reference_forwards=forwards)
    return info, tables


def attach(data: PreferenceData, tables: dict[str, pa.Table], key: str) -> PreferenceData:
    """`data` with the cached reference columns joined by example index (row i of the table is row i)."""
    joined = {}
    for split in SPLITS:
        dataset = getattr(data, split)
        if dataset is not None:
            table = tables[split]
            for name in table.column_names[1:]:
                dataset = dataset.add_column(
                    name, table.column(name).to_numpy(), new_fingerprint=key_hash([key, split, name])[:32]
                )
        joined[split] = dataset
    return PreferenceData(train=joined["train"], eval=joined["eval"], skipped=data.skipped,
                          fingerprint=data.fingerprint)


def ensure_reference_cache(cfg: TrainConfig, *, device: torch.device | str | None = None) -> CacheInfo:
    """Build (or find) the reference cache a run of `cfg` will read; for sweep drivers, once per distinct
    key before the trials start. Honors precompute_ref never and reference-free losses (status off).

    device: where the reference runs; default cuda if available, else cpu.
    """
    from transformers import set_seed

    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    off = _off_reason(cfg)
    if off:
        return CacheInfo(reason=off)
    args = cfg.training_arguments()
    set_seed(args.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tokenizer, stage=cfg.finetuning.stage, seed=args.seed,
                                do_train=args.do_train)
    return prepare(cfg, data, tokenizer, seed=args.seed, build=True, device=device)[0]


def reference_cache_identity(cfg: TrainConfig) -> str | None:
    """A cheap stand-in for the cache key, from the config alone (no data, no hashing): configs with equal
    identities have equal keys while the files stay the same. None when `cfg` uses no cache. For a sweep
    driver to call `ensure_reference_cache` once per distinct key."""
    if _off_reason(cfg):
        return None
    from trainer.models import compute_dtype

    m, d, args = cfg.model, cfg.data, cfg.training_arguments(device_independent=True)
    fields = [
        str(cache_root(cfg)), cfg.finetuning.stage, m.model_name_or_path, m.ref_model, m.model_revision,
        str(compute_dtype(cfg.training)), d.dataset, d.eval_dataset, str(Path(d.dataset_dir).resolve()),
        d.template, d.cutoff_len, d.max_samples, float(d.val_size or 0), args.seed if d.val_size else None,
        args.do_train, *([cfg.finetuning.ld_alpha] if cfg.finetuning.ld_alpha is not None else []),
    ]
    return key_hash(fields)


def ensure_reference_caches(cfgs: list[TrainConfig], *, device: torch.device | str | None = None) -> list[CacheInfo]:
    """`ensure_reference_cache` for each distinct `reference_cache_identity` of `cfgs` (e.g. a sweep's corner
    configs), in order; configs that use no cache are skipped."""
    seen, infos = set(), []
    for cfg in cfgs:
        identity = reference_cache_identity(cfg)
        if identity is not None and identity not in seen:
            seen.add(identity)
            infos.append(ensure_reference_cache(cfg, device=device))
    return infos


__all__ = [
    "CacheInfo", "CacheInvalid", "attach", "cache_root", "ensure_reference_cache", "ensure_reference_caches",
    "prepare", "reference_cache_identity",
]
