"""The sweep driver's reference cache build, split across Ray tasks: one task finds each distinct key's entry
(`trainer.ref_cache.shards.plan_build`), then for each missing entry one task per shard runs the reference
forward of its slice of the examples and writes its shard to the cache root (`build_shard`), and the driver
writes the manifest last (`commit_build`), once every shard is in. With the cache root on a bucket
(`storage_path: s3://...`), tasks and trials on any node read and write it without a shared filesystem.
"""

from __future__ import annotations

import time

from trainer.config import TrainConfig, with_overrides


def cache_under_storage(base_cfg: TrainConfig, storage_path: str | None) -> TrainConfig:
    """A sweep's reference cache root: `ref_cache_dir` as given, else `<storage_path>/ref_cache` when the
    spec names a storage path (on a bucket, every node reaches it without a shared filesystem)."""
    if base_cfg.finetuning.ref_cache_dir or base_cfg.ray.storage_path or not storage_path:
        return base_cfg
    return with_overrides(base_cfg, {"ref_cache_dir": f"{storage_path.rstrip('/')}/ref_cache"})


def shard_task_resources(per_worker: dict[str, float], node_cpus: list[float], shards: int) -> dict[str, float]:
    """What one shard task holds: one training worker's resources; without GPUs, an equal share of the
    largest node's CPUs instead (no trial runs yet, and Ray gives a task as many torch threads as CPUs)."""
    need = dict(per_worker)
    if not need.get("GPU"):
        need["CPU"] = max(need.get("CPU", 0.0), max(node_cpus or [1.0]) // max(shards, 1), 1.0)
    return need


def build_caches(configs: list, *, shards: int, per_worker: dict[str, float]) -> list:
    """Find or build the reference cache of each config in `configs` (one per distinct key) with `shards`
    Ray tasks per missing entry; their `CacheInfo`s, in order."""
    import ray

    from trainer.ref_cache.shards import build_shard, commit_build, plan_build

    def remote(fn, need: dict[str, float]):
        need = dict(need)
        return ray.remote(fn).options(num_cpus=need.pop("CPU", 0), num_gpus=need.pop("GPU", 0),
                                      resources=need or None)

    node_cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    plans = ray.get([remote(plan_build, {"CPU": 1}).remote(cfg) for cfg in configs])
    infos = []
    for info, plan in plans:
        if plan is None:
            infos.append(info)
            continue
        n = max(1, min(shards, plan.rows.get("train") or max(plan.rows.values())))
        task = remote(build_shard, shard_task_resources(per_worker, node_cpus, n))
        records = [r for part in ray.get([task.remote(plan, i, n) for i in range(n)]) for r in part]
        infos.append(commit_build(plan, records))
    return infos


def build_reference_caches(spec, base_cfg, *, per_worker: dict[str, float], shards: int) -> list:
    """Reference log-probs once per distinct cache key of the sweep's corner configs, before any trial."""
    from sweeps.spec_checks import corner_configs
    from trainer.ref_cache import reference_cache_identity

    configs, seen = [], set()
    for chosen in corner_configs(spec):
        cfg = with_overrides(base_cfg, chosen)
        identity = reference_cache_identity(cfg)
        if identity is not None and identity not in seen:
            seen.add(identity)
            configs.append(cfg)
    if not configs:
        return []
    started = time.monotonic()
    infos = build_caches(configs, shards=shards, per_worker=per_worker)
    for info in infos:
        print(f"prefsweep: reference log-probs {info.status} ({info.path or info.reason}); "
              f"{time.monotonic() - started:.0f}s", flush=True)
    return infos
