"""The reference cache key: everything the cached log-probs depend on (`key_fields`), hashed (`key_hash`).

Weight and tokenizer files enter by content hash, remembered under `<root>/.hashes` by (path, size, mtime,
inode), so a model's weights are read once, not once per run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trainer.atomic_write import write_atomic
from trainer.config import TrainConfig
from trainer.data import PreferenceData
from trainer.losses import get_loss
from trainer.ref_cache.info import say

FORMAT_VERSION = 1
WEIGHT_PATTERNS = ("*.safetensors", "config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)


USER_CACHE = "~/.cache/prefsweep/ref_cache"


def cache_root(cfg: TrainConfig) -> Path | str:
    """`ref_cache_dir`, else `<ray.storage_path>/ref_cache`, else the user cache. A URI (`s3://...`) stays a
    string: trials on any node reach it through `pyarrow.fs`, with no shared filesystem."""
    given = cfg.finetuning.ref_cache_dir
    storage = cfg.ray.storage_path
    if not given and storage:
        given = f"{storage.rstrip('/')}/ref_cache"
    if given and "://" in given:
        return given.rstrip("/")
    return Path(given or USER_CACHE).expanduser().resolve()


def hash_root(root: Path | str) -> Path:
    """Where content hashes of local weight files are remembered: the cache root, or for a URI root (the
    files hashed are local to this node) the user cache."""
    return root if isinstance(root, Path) else Path(USER_CACHE).expanduser()


def token_cache_root(cfg: TrainConfig) -> Path | None:
    """Where `tokenized_cache: true` keeps tokenized datasets (beside local reference caches; with a URI cache
    root, on this node's user cache); None when off."""
    return hash_root(cache_root(cfg)) / "tokenized" if cfg.data.tokenized_cache else None


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


def key_fields(cfg: TrainConfig, data: PreferenceData, *, seed: int, root: Path | str) -> dict[str, Any]:
    """Everything the cached numbers depend on, as plain JSON values (the manifest stores them as is)."""
    from trainer.models import compute_dtype

    root = hash_root(root)
    model, data_args = cfg.model, cfg.data
    ref_name = model.ref_model or model.model_name_or_path
    ref_dir = _local_dir(ref_name, model.model_revision, model.cache_dir)
    tok_dir = _local_dir(model.model_name_or_path, model.model_revision, model.cache_dir)
    weights = _files_identity(ref_dir, WEIGHT_PATTERNS, root)
    if not any(name.endswith(".safetensors") for name in weights):
        say("reference %s: no local safetensors to hash; the cache key holds its name and revision only",
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


def off_reason(cfg: TrainConfig) -> str:
    if not get_loss(cfg.loss_name).needs_reference:
        return f"{cfg.loss_name} is reference-free"
    if cfg.finetuning.precompute_ref == "never":
        return "precompute_ref: never"
    if cfg.finetuning.sync_ref_model:
        return "sync_ref_model: the reference moves during training (TR-DPO), so no shared cache"
    return ""


def reference_cache_identity(cfg: TrainConfig) -> str | None:
    """A cheap stand-in for the cache key, from the config alone (no data, no hashing): configs with equal
    identities have equal keys while the files stay the same. None when `cfg` uses no cache. For a sweep
    driver to call `ensure_reference_cache` once per distinct key."""
    if off_reason(cfg):
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
