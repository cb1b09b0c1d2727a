"""A reference cache build split across workers: `plan_build` (the driver: key, hit or miss), `build_shard`
(one worker: the reference forward of one contiguous slice of every split, written as a shard) and
`commit_build` (the driver, last: the manifest). Each example falls in exactly one shard, so each example's
reference forward runs once. No Ray here: `rayjobs.ref_cache_build` runs `build_shard` as one Ray task per
shard, on any node, since shards go straight to the cache root (a bucket needs no shared filesystem).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from trainer.config import TrainConfig
from trainer.data import PreferenceData
from trainer.ref_cache.build import _rng_untouched, default_device, load_for_cache, reference_tables
from trainer.ref_cache.fs_storage import storage_for
from trainer.ref_cache.info import SPLITS, CacheInfo, CacheInvalid, say
from trainer.ref_cache.key import cache_root, key_fields, key_hash, off_reason


@dataclass
class BuildPlan:
    """What every shard task of one cache entry needs, and what the driver commits."""

    cfg: TrainConfig
    key: str
    fields: dict[str, Any]
    rows: dict[str, int]
    """Examples per split."""
    reason: str = ""
    """Why an existing entry is rebuilt (empty: there was none)."""
    started: float = field(default_factory=time.perf_counter)


def plan_build(cfg: TrainConfig) -> tuple[CacheInfo, BuildPlan | None]:
    """(info, None) when `cfg` uses no cache or its entry exists and is valid; else (info, the plan)."""
    off = off_reason(cfg)
    if off:
        return CacheInfo(reason=off), None
    _, data, seed = load_for_cache(cfg)
    root = cache_root(cfg)
    storage = storage_for(root)
    fields = key_fields(cfg, data, seed=seed, root=root)
    key = key_hash(fields)
    rows = {split: len(getattr(data, split)) for split in SPLITS if getattr(data, split) is not None}
    try:
        storage.read(key, fields, rows)
        say("reference cache hit: %s", storage.location(key))
        return CacheInfo(key=key, path=storage.location(key), hit=True, rows=rows, status="hit"), None
    except FileNotFoundError:
        reason = ""
    except CacheInvalid as err:
        reason = f"rebuilt: {err}"
        say("reference cache %s is not usable (%s); it is rebuilt", storage.location(key), err, warn=True)
    plan = BuildPlan(cfg=cfg, key=key, fields=fields, rows=rows, reason=reason)
    return CacheInfo(key=key, path=storage.location(key), rows=rows, status="miss", reason=reason), plan


def shard_range(rows: int, shard: int, shards: int) -> range:
    """Shard `shard` of `shards` of `rows` examples: contiguous, sizes differing by at most one."""
    return range(rows * shard // shards, rows * (shard + 1) // shards)


def build_shard(plan: BuildPlan, shard: int, shards: int, *, device: torch.device | str | None = None) -> list[dict]:
    """The reference forward of shard `shard` of every split, written to the cache root; its records (with
    `forwards`, the examples this call passed through the reference)."""
    from trainer.models import compute_dtype, load_causal_lm

    cfg = plan.cfg
    tokenizer, data, _ = load_for_cache(cfg)
    if data.fingerprint != plan.fields["dataset_fingerprint"]:
        raise RuntimeError(f"shard {shard}: the data tokenized here differ from the driver's (fingerprint "
                           f"{data.fingerprint[:12]} vs {plan.fields['dataset_fingerprint'][:12]})")
    slices = {split: shard_range(plan.rows[split], shard, shards) for split in plan.rows}
    slices = {split: rows for split, rows in slices.items() if len(rows)}  # more shards than eval rows
    part = PreferenceData(
        **{split: getattr(data, split).select(slices[split]) if split in slices else None for split in SPLITS},
        skipped=data.skipped, fingerprint=data.fingerprint,
    )
    device = torch.device(device) if device is not None else default_device()
    batch_size = int(cfg.training.get("per_device_eval_batch_size") or 8)
    with _rng_untouched():
        model = load_causal_lm(cfg.model.ref_model or cfg.model.model_name_or_path, cfg.model,
                               compute_dtype(cfg.training)).to(device)
        tables, _ = reference_tables(
            model, part, tokenizer, stage=cfg.finetuning.stage, batch_size=batch_size, device=device,
            lean_head=cfg.finetuning.lean_head, chunk_size=cfg.finetuning.logps_chunk_size,
            ld_alpha=cfg.finetuning.ld_alpha,
        )
        del model
    storage = storage_for(cache_root(cfg))
    records = []
    for split, table in tables.items():
        offset = slices[split].start  # the shard's rows are examples offset.. of the whole split
        table = table.set_column(0, "index", pa.array(np.arange(table.num_rows, dtype=np.int64) + offset))
        records.append({**storage.write_shard(plan.key, split, shard, table), "forwards": table.num_rows})
    return records


def commit_build(plan: BuildPlan, records: list[dict]) -> CacheInfo:
    """Write the manifest of the shards in `records` (all shards of every split), last; the entry's info."""
    import transformers

    forwards = sum(r.pop("forwards") for r in records)
    extra = {"reference_forwards": forwards, "created": time.time(), "shards": len({r["shard"] for r in records}),
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    storage = storage_for(cache_root(plan.cfg))
    location = storage.commit(plan.key, plan.fields, records, extra)
    seconds = time.perf_counter() - plan.started
    say("reference cache built in %.1fs: %d examples in %d shards, one reference forward each", seconds,
        forwards, extra["shards"])
    return CacheInfo(key=plan.key, path=location, rows=plan.rows, status="miss", build_seconds=seconds,
                     reason=plan.reason, reference_forwards=forwards)
