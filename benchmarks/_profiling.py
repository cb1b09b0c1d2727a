"""Where a benchmark's step time goes: torch.profiler regions named after the functions they wrap
(`label_functions`), the breakdown by region and op (`profile_breakdown`), and its printout.

Standard library only at module level, like `benchmarks._common` (it runs in the LLaMA-Factory peer's venv too).
"""

from __future__ import annotations

from typing import Any

REGION_PREFIX = "bench::"


def label_functions(targets: list[tuple[Any, str, str]]) -> list[str]:
    """Wrap `owner.attr` in `torch.profiler.record_function(REGION_PREFIX + name)` for each (owner, attr, name).

    For profiling runs only (it patches the peer's code in this process). Targets that do not exist are
    skipped and returned, so a renamed function costs a region, not the run.
    """
    import functools
    import inspect

    from torch.profiler import record_function

    missing = []
    for owner, attr, name in targets:
        fn = inspect.getattr_static(owner, attr, None)
        if fn is None:
            missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            continue
        is_static = isinstance(fn, staticmethod)
        inner = fn.__func__ if is_static else fn

        def wrapped(*args, __inner=inner, __label=REGION_PREFIX + name, **kwargs):
            with record_function(__label):
                return __inner(*args, **kwargs)

        wrapped = functools.wraps(inner)(wrapped)
        setattr(owner, attr, staticmethod(wrapped) if is_static else wrapped)
    return missing


def profile_breakdown(profiler, top: int = 15) -> dict[str, Any]:
    """Self time (s) of the profiled ops per region -- the innermost `label_functions` region around an op,
    else the autograd backward or optimizer step it runs in, else `other` --, per labelled region inclusive
    of the regions inside it, per (region, op), and the top ops overall."""
    from collections import defaultdict

    regions: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    region_ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ops: dict[str, float] = defaultdict(float)
    for event in profiler.profiler.function_events:
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        region, parent = "other", event
        while parent is not None:
            if parent.name.startswith(REGION_PREFIX):
                region = parent.name[len(REGION_PREFIX):]
                break
            if region == "other" and parent.name.startswith("Optimizer.step"):
                region = "optimizer step"
            elif region == "other" and parent.name.startswith("autograd::engine"):
                region = "backward (autograd, unlabelled)"
            parent = parent.cpu_parent
        regions[region] += seconds
        labels, parent = set(), event
        while parent is not None:
            if parent.name.startswith(REGION_PREFIX):
                labels.add(parent.name[len(REGION_PREFIX):])
            parent = parent.cpu_parent
        for label in labels:
            inclusive[label] += seconds
        region_ops[region][event.name] += seconds
        ops[event.name] += seconds

    def ranked(table: dict[str, float], n: int) -> dict[str, float]:
        return {k: round(v, 3) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:n]}

    return {
        "total_self_seconds": round(sum(regions.values()), 3),
        "regions": ranked(regions, len(regions)),
        "inclusive": ranked(inclusive, len(inclusive)),
        "region_ops": {r: ranked(t, 8) for r, t in region_ops.items()},
        "top_ops": ranked(ops, top),
    }


def print_profile(name: str, run: dict[str, Any]) -> None:
    """The `profile_breakdown` of a run's timed steps, per step."""
    prof = run["profile"]
    steps = run["steps"] - run["warmup"]
    total = prof["total_self_seconds"]
    print(f"\nprofile {name}: {total / steps:.2f} s of op self time per step over {steps} steps "
          f"(profiled, so slower than the timed runs)")
    for region, seconds in prof["regions"].items():
        ops = ", ".join(f"{op} {t / steps:.2f}" for op, t in list(prof["region_ops"][region].items())[:4])
        print(f"  {region:<34}{seconds / steps:7.2f} s/step {100 * seconds / total:5.1f}%   [{ops}]")
    for region, seconds in prof["inclusive"].items():
        if prof["regions"].get(region) != seconds:
            print(f"  (incl.) {region:<26}{seconds / steps:7.2f} s/step {100 * seconds / total:5.1f}%")
    if run.get("profile_regions_missing"):
        print(f"  regions not found: {run['profile_regions_missing']}")
