"""A sweep spec: a base training config, a search space over its keys, and how to search it.

    name: demo                         # default: the spec file's name
    base: configs/tiny_dpo.yaml        # a config path (relative to the working dir) or an inline mapping
    overrides: {max_steps: 8}          # applied to the base config before sampling
    space:
      pref_loss: {grid: [sigmoid, ipo, simpo]}
      pref_beta:                       # a range per loss: `by` names the key it depends on
        by: pref_loss
        values:
          sigmoid: {loguniform: [0.01, 0.5]}
          ipo: {choice: [0.1, 0.5]}
          simpo: {uniform: [2.0, 10.0]}
      simpo_gamma: {by: pref_loss, values: {simpo: {uniform: [0.3, 1.0]}}}   # simpo trials only
    metric: eval_rewards/accuracies    # default; mode: max
    num_samples: 2                     # grids are repeated num_samples times
    search: random                     # random (grids expanded, the rest sampled) or optuna (TPE)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or none
    max_concurrent_trials: null        # default: as many trials as the cluster holds at once
    trial_resources: {num_workers: 1, resources_per_worker: {CPU: 1}}   # each trial's Ray Train run

A dimension is one of `grid: [values]`, `choice: [values]`, `uniform: [low, high]`,
`loguniform: [low, high]`, `randint: [low, high]` (high excluded, as in Ray Tune). A conditional
dimension `{by: KEY, values: {VALUE: dimension or constant}}` is sampled only when KEY (a grid/choice
dimension or a base-config constant) takes one of the listed values; otherwise the key keeps the base
config's value, so a sigmoid trial never carries a `simpo_gamma`. A grid inside a condition (a beta
grid per loss) is expanded for each value of a grid KEY.

This package is pure Python (no Ray). This module: the spec's keys and its loading; `sweeps.dimensions`:
the space's dimensions and their parsing; `sweeps.spec_checks`: checks of the whole spec; `sweeps.trials`:
trial overrides and names; `sweeps.tune_space` turns a spec into Ray Tune / Optuna search spaces.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from sweeps.dimensions import Dimension, parse_space
from sweeps.key_errors import unknown_key
from sweeps.spec_checks import check_conditions, check_corners, check_metric_is_evaluated
from sweeps.spec_model import DEFAULT_METRIC, SchedulerSpec, SweepSpec
from trainer.config import apply_overrides, load_config, parse_override, read_yaml, valid_keys
from trainer.errors import ConfigError, did_you_mean

SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("none", "asha")
MODES = ("max", "min")
RESOURCE_KEYS = ("num_workers", "use_gpu", "resources_per_worker")

# What the trainer logs (docs/architecture.md, "Metrics the trainer logs"), each also with an `eval_` prefix at evaluation.
TRAINER_METRICS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "sft_loss", "odds_ratio_loss", "kl",
)
KNOWN_METRICS = TRAINER_METRICS + tuple(f"eval_{m}" for m in TRAINER_METRICS) + ("grad_norm", "learning_rate")

SPEC_KEYS = {
    "name": "experiment name in Ray Tune and MLflow (default: the spec file's name)",
    "description": "free text, logged with the spec",
    "base": "training config: a YAML path (relative to the working dir) or an inline mapping",
    "overrides": "base-config overrides (mapping, or a list of KEY=VALUE)",
    "space": "search space: config key -> dimension",
    "metric": f"metric to optimize (default {DEFAULT_METRIC})",
    "mode": "max or min (default max)",
    "num_samples": "trials sampled (grids: repeats of the whole grid); default 1",
    "search": "random (default; grids expanded), grid (the same) or optuna (TPE)",
    "search_seed": "seed of the random / Optuna sampler (default 0)",
    "scheduler": "none (default) or {type: asha, grace_period, reduction_factor, max_t, time_attr}",
    "max_concurrent_trials": "trials at once (default: what the cluster holds)",
    "trial_resources": f"each trial's Ray Train run: {', '.join(RESOURCE_KEYS)}",
    "storage_path": "where Ray Tune and Ray Train keep results (default ~/ray_results)",
    "log_model": "upload each trial's final model to MLflow (default false)",
    "reference_cache": "compute reference log-probs once before the trials (default true)",
    "register_best": "log the best trial's model to MLflow and register it under the sweep's name (default false)",
    "tiny_reward_model": "likewise `make tiny-reward-model`'s tiny reward model, built from tiny_model",
    "tiny_model": "a folder the driver fills with `prefsweep make-tiny-model`'s default tiny model when it is "
    "missing (a `ray job submit --working-dir .` uploads no git-ignored folder such as models/)",
}
ASHA_KEYS = ("type", "time_attr", "grace_period", "reduction_factor", "max_t", "brackets")



# ---------------------------------------------------------------------------------------- parsing


def _dotted(overrides: list[str] | dict) -> tuple[dict, dict]:
    """Split KEY=VALUE overrides into (sweep-spec keys, base-config keys)."""
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    spec_part, config_part = {}, {}
    config_keys = valid_keys()
    for key, value in items:
        head = key.split(".", 1)[0]
        if head in SPEC_KEYS:
            spec_part[key] = value
        elif key in config_keys or head == "ray":
            config_part[key] = value
        else:
            hint = did_you_mean(key, list(SPEC_KEYS) + config_keys, prefixes=True)
            raise ConfigError(f"override {key!r} is neither a sweep key nor a training config key{hint}")
    return spec_part, config_part


def _apply_spec_overrides(raw: dict, overrides: dict) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not rest:
            raw[head] = value
            continue
        section = raw.get(head)
        if section is None or isinstance(section, str):  # `scheduler: none` + scheduler.type=asha
            section = {"type": section} if head == "scheduler" and section else {}
        if not isinstance(section, dict):
            raise ConfigError(f"override {key}: {head} is not a mapping")
        section = dict(section)
        section[rest] = value
        raw[head] = section
    return raw


def _base_config(raw: dict) -> tuple[dict, str | None]:
    base = raw.get("base")
    if base is None:
        raise ConfigError("base: required (a training config path or an inline mapping)")
    if isinstance(base, str):
        return read_yaml(base), base
    if isinstance(base, dict):
        return dict(base), None
    raise ConfigError(f"base: expected a config path or a mapping, got {base!r}")


def _scheduler(node: Any) -> SchedulerSpec:
    if node in (None, "none", False):
        return SchedulerSpec()
    if node == "asha":
        return SchedulerSpec(type="asha")
    if not isinstance(node, dict):
        raise ConfigError(f"scheduler: expected none, asha or a mapping, got {node!r}")
    for key in node:
        if key not in ASHA_KEYS:
            raise unknown_key(key, ASHA_KEYS, "scheduler")
    kind = node.get("type", "asha")
    if kind not in SCHEDULERS:
        raise unknown_key(str(kind), SCHEDULERS, "scheduler.type")
    sched = SchedulerSpec(type=kind, **{k: v for k, v in node.items() if k != "type"})
    if sched.grace_period < 1:
        raise ConfigError(f"scheduler.grace_period must be >= 1, got {sched.grace_period}")
    if sched.reduction_factor <= 1:
        raise ConfigError(f"scheduler.reduction_factor must be > 1, got {sched.reduction_factor}")
    if sched.max_t is not None and sched.max_t < sched.grace_period:
        raise ConfigError(f"scheduler.max_t ({sched.max_t}) must be >= grace_period ({sched.grace_period})")
    return sched


def load_sweep(source: str | Path | dict, overrides: list[str] | dict = ()) -> SweepSpec:
    """Parse and validate a sweep spec (YAML path or mapping) plus KEY=VALUE overrides.

    Overrides whose first part is a spec key (`num_samples=2`, `scheduler.grace_period=2`,
    `space.pref_beta={choice: [0.1]}`) change the spec; any other (`max_steps=4`, `ray.num_workers=2`)
    changes the base training config.
    """
    path = None if isinstance(source, dict) else str(source)
    raw = dict(source) if isinstance(source, dict) else read_yaml(source)
    spec_overrides, config_overrides = _dotted(overrides)
    raw = _apply_spec_overrides(raw, spec_overrides)
    for key in raw:
        if key not in SPEC_KEYS:
            raise unknown_key(str(key), list(SPEC_KEYS), where=f"sweep spec {path or ''}".strip())
    try:
        return _build(raw, path, config_overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def _build(raw: dict, path: str | None, config_overrides: dict) -> SweepSpec:
    base, _ = _base_config(raw)
    inline = raw.get("overrides") or {}
    if isinstance(inline, list):
        inline = dict(parse_override(o) for o in inline)
    if not isinstance(inline, dict):
        raise ConfigError(f"overrides: expected a mapping or a list of KEY=VALUE, got {inline!r}")
    resources = raw.get("trial_resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"trial_resources: expected a mapping, got {resources!r}")
    for key in resources:
        if key not in RESOURCE_KEYS:
            raise unknown_key(key, RESOURCE_KEYS, "trial_resources")
    base = apply_overrides(base, inline)
    if resources:
        base["ray"] = {**(base.get("ray") or {}), **resources}
    base = apply_overrides(base, config_overrides)  # the command line wins
    load_config(base)  # the base itself must be a valid config

    name = raw.get("name") or (Path(path).stem if path else "sweep")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(name)):
        raise ConfigError(f"name: {name!r} must be letters, digits, '_', '-', '.' (it names directories)")
    search = raw.get("search", "random")
    if search not in SEARCHES:
        raise unknown_key(str(search), SEARCHES, "search")
    mode = raw.get("mode", "max")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    metric = raw.get("metric", DEFAULT_METRIC)
    if metric not in KNOWN_METRICS:
        raise ConfigError(f"metric {metric!r} is not logged by the trainer{did_you_mean(str(metric), KNOWN_METRICS)}")
    num_samples = raw.get("num_samples", 1)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    tiny_model, tiny_rm = raw.get("tiny_model"), raw.get("tiny_reward_model")
    for key, value in (("tiny_model", tiny_model), ("tiny_reward_model", tiny_rm)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{key}: expected a folder path, got {value!r}")
    if tiny_rm and not tiny_model:
        raise ConfigError("tiny_reward_model is built from tiny_model: set tiny_model too")
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 1):
        raise ConfigError(f"max_concurrent_trials must be an integer >= 1 or null, got {concurrent!r}")

    spec = SweepSpec(
        name=str(name),
        base=base,
        space=parse_space(raw.get("space"), config_keys=[k for k in valid_keys() if k != "ray"]),
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        search=search,
        search_seed=int(raw.get("search_seed", 0)),
        scheduler=_scheduler(raw.get("scheduler")),
        max_concurrent_trials=concurrent,
        storage_path=raw.get("storage_path"),
        log_model=bool(raw.get("log_model", False)),
        reference_cache=bool(raw.get("reference_cache", True)),
        register_best=bool(raw.get("register_best", False)),
        description=str(raw.get("description") or ""),
        tiny_model=tiny_model,
        tiny_reward_model=tiny_rm,
        source={**raw, "base": raw["base"], "overrides": {**inline, **config_overrides}},
        path=path,
    )
    check_conditions(spec)
    check_metric_is_evaluated(spec)
    if spec.search == "optuna":
        grids = [
            k for k, d in spec.space.items()
            if (d.kind == "grid" if isinstance(d, Dimension) else any(c.kind == "grid" for c in d.cases.values()))
        ]
        if grids:
            raise ConfigError(f"space.{grids[0]}: search optuna samples and cannot expand a grid; use choice")
    check_corners(spec)
    return spec


def dump(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.source, sort_keys=False)
