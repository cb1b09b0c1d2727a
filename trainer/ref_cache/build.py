"""Computing the reference log-probs once per example (`reference_tables`), finding or building a run's cache
(`prepare`), joining it to the dataset (`attach`), and the sweep driver's `ensure_reference_cache(s)`."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from trainer.config import TrainConfig
from trainer.data import PreferenceData, make_collator
from trainer.data.collator import REFERENCE_COLUMNS, reference_column_names
from trainer.logps import response_mask
from trainer.losses import ld_weighted_logps
from trainer.ref_cache.fs_storage import storage_for
from trainer.ref_cache.info import SPLITS, CacheInfo, CacheInvalid, say
from trainer.ref_cache.key import (
    cache_root,
    key_fields,
    key_hash,
    off_reason,
    reference_cache_identity,
    token_cache_root,
)


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
                        say("lean LM-head log-probs are off for the reference (%s); computing logits", err, warn=True)
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


@contextlib.contextmanager
def _build_reference(cfg: TrainConfig, policy: torch.nn.Module | None, device: torch.device):
    """The model whose forward gives the cached reference log-probs, on `device`.

    The starting policy itself when there is no `ref_model` and the caller passes it (a training process:
    one copy of the weights, not two): LoRA with its adapters disabled (the base), full/freeze as loaded
    (the initial weights, before any optimizer step); the same weights and forward a freshly loaded copy
    would run, so the same numbers. Its train/eval mode and device are restored afterwards. Otherwise
    (`ref_model`, the sweep driver's build, ZeRO-3-partitioned weights that only their engine can run)
    the reference is loaded on its own and dropped after the build.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    from trainer.models import Reference, compute_dtype, load_causal_lm

    if policy is not None and not cfg.model.ref_model and not is_deepspeed_zero3_enabled():
        was_training, home = policy.training, next(policy.parameters()).device
        kind = "adapters_off" if cfg.finetuning.finetuning_type == "lora" else "self"
        try:
            with Reference(kind).forward_model(policy.to(device)) as model:
                yield model
        finally:
            policy.to(home).train(was_training)
        return
    ref_name = cfg.model.ref_model or cfg.model.model_name_or_path
    model = load_causal_lm(ref_name, cfg.model, compute_dtype(cfg.training)).to(device)
    try:
        yield model
    finally:
        del model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(
    cfg: TrainConfig, data: PreferenceData, tokenizer: Any, *, seed: int, build: bool,
    device: torch.device | str | None = None, policy: torch.nn.Module | None = None,
) -> tuple[CacheInfo, dict[str, pa.Table] | None]:
    """Find (and with `build`, make) the reference cache of `cfg` and `data`: (info, tables or None).

    `build` False reads only an existing valid cache (precompute_ref auto). Never touches the cache for
    reference-free losses or precompute_ref never. `policy`: the freshly loaded policy, before any optimizer
    step; when the reference is the starting policy (no `ref_model`) the build runs it (`_build_reference`)
    instead of loading a second copy of the weights.
    """
    off = off_reason(cfg)
    if off:
        if cfg.finetuning.sync_ref_model:
            say("reference cache off: %s", off)
        return CacheInfo(reason=off), None
    root = cache_root(cfg)
    storage = storage_for(root)
    if not build and not storage.has_entries():
        return CacheInfo(reason=f"precompute_ref: auto and no cache under {root}"), None
    fields = key_fields(cfg, data, seed=seed, root=root)
    key = key_hash(fields)
    path = storage.location(key)
    rows = {split: len(getattr(data, split)) for split in SPLITS if getattr(data, split) is not None}
    reason = ""
    try:
        tables = storage.read(key, fields, rows)
        say("reference cache hit: %s (%s)", path, ", ".join(f"{s} {n}" for s, n in rows.items()))
        return CacheInfo(key=key, path=path, hit=True, rows=rows, status="hit"), tables
    except FileNotFoundError:
        pass
    except CacheInvalid as err:
        reason = f"rebuilt: {err}"
        say("reference cache %s is not usable (%s); it is not read", path, err, warn=True)
    if not build:
        return CacheInfo(key=key, path=path, rows=rows, reason=reason or "precompute_ref: auto and no cache "
                         "for this key"), None

    started = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    ref_name = cfg.model.ref_model or cfg.model.model_name_or_path
    say("reference cache miss: computing reference log-probs of %s into %s", ref_name, path)
    batch_size = int(cfg.training.get("per_device_eval_batch_size") or 8)
    with _rng_untouched(), _build_reference(cfg, policy, device) as model:
        # RNG untouched: a cached run must initialise the policy (LoRA A matrices) as an uncached one
        tables, forwards = reference_tables(
            model, data, tokenizer, stage=cfg.finetuning.stage, batch_size=batch_size, device=device,
            lean_head=cfg.finetuning.lean_head, chunk_size=cfg.finetuning.logps_chunk_size,
            ld_alpha=cfg.finetuning.ld_alpha,
        )
        del model
    import transformers

    extra = {"reference_forwards": forwards, "created": time.time(),
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    storage.write(key, fields, tables, extra)
    seconds = time.perf_counter() - started
    say("reference cache built in %.1fs: %d examples, one reference forward each", seconds, forwards)
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
    off = off_reason(cfg)
    if off:
        return CacheInfo(reason=off)
    tokenizer, data, seed = load_for_cache(cfg)
    return prepare(cfg, data, tokenizer, seed=seed, build=True, device=device)[0]


def load_for_cache(cfg: TrainConfig) -> tuple[Any, PreferenceData, int]:
    """(tokenizer, tokenized data, seed) of a run of `cfg`, as its training process will load them."""
    from transformers import set_seed

    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    args = cfg.training_arguments()
    set_seed(args.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tokenizer, stage=cfg.finetuning.stage, seed=args.seed,
                                do_train=args.do_train, token_cache=token_cache_root(cfg))
    return tokenizer, data, args.seed


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
