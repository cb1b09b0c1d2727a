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

This module is pure Python (no Ray): parsing, validation, sampling helpers and trial names.
`sweeps.tune_space` turns a spec into Ray Tune / Optuna search spaces.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import apply_overrides, load_config, parse_override, read_yaml, valid_keys
from trainer.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("none", "asha")
MODES = ("max", "min")
DEFAULT_METRIC = "eval_rewards/accuracies"
RESOURCE_KEYS = ("num_workers", "use_gpu", "resources_per_worker")

# What the trainer logs (DESIGN.md), each also with an `eval_` prefix at evaluation.
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
}
ASHA_KEYS = ("type", "time_attr", "grace_period", "reduction_factor", "max_t", "brackets")


# ------------------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class Dimension:
    """One sampled key: `kind` in KINDS, or "constant" (only inside a conditional)."""

    kind: str
    args: tuple

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice", "constant")

    def values(self) -> tuple:
        """Possible values of a categorical dimension."""
        if not self.categorical:
            raise ValueError(f"{self.kind} has no finite set of values")
        return self.args

    def corners(self) -> tuple:
        """Values to validate against the config: every category, or both ends of a range."""
        if self.categorical:
            return self.args
        low, high = self.args
        return (low, high - 1) if self.kind == "randint" else (low, high)

    def sample(self, rng) -> Any:
        """One value drawn with a `numpy.random.Generator` (used by conditional dimensions)."""
        if self.kind == "constant":
            return self.args[0]
        if self.kind in ("grid", "choice"):
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return int(rng.integers(low, high))  # randint


@dataclass(frozen=True)
class Conditional:
    """`key` is sampled from `cases[value of by]`; unset when `by` takes a value not in `cases`."""

    by: str
    cases: dict

    def case(self, value: Any) -> Dimension | None:
        return self.cases.get(value)


@dataclass
class SchedulerSpec:
    type: str = "none"
    time_attr: str | None = None
    """Ray Tune result key that counts progress; default `evaluations` for eval metrics, else `step`."""
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None
    """Stop every trial once `time_attr` reaches it (default: never; trials end on their own)."""
    brackets: int = 1


@dataclass
class SweepSpec:
    name: str
    base: dict
    """The raw base training config, overrides applied (flat LLaMA-Factory keys + `ray:`)."""
    space: dict
    metric: str = DEFAULT_METRIC
    mode: str = "max"
    num_samples: int = 1
    search: str = "random"
    search_seed: int = 0
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    max_concurrent_trials: int | None = None
    storage_path: str | None = None
    log_model: bool = False
    reference_cache: bool = True
    """Build the reference log-prob caches the trials read (trainer.ref_cache) before they start."""
    description: str = ""
    source: dict = field(default_factory=dict)
    """The spec as written (plus overrides): what MLflow records on the parent run."""
    path: str | None = None

    def fixed_value(self, key: str) -> Any:
        """The base config's value of `key` (its default when the base leaves it out)."""
        if key in self.base:
            return self.base[key]
        return load_config(self.base).to_flat_dict().get(key)

    def possible_values(self, key: str) -> tuple:
        """Every value `key` can take in this sweep (for `by` keys: categorical or fixed)."""
        dim = self.space.get(key)
        if dim is None:
            return (self.fixed_value(key),)
        if isinstance(dim, Conditional) or not dim.categorical:
            raise ConfigError(f"space.{key}: a `by` key must be a grid or choice dimension, or fixed")
        return dim.values()


# ---------------------------------------------------------------------------------------- parsing


def nearest(key: str, valid) -> str | None:
    """The valid name `key` most likely meant: one it begins, else the closest spelling."""
    valid = list(valid)
    prefixed = [v for v in valid if v.startswith(key) or key.startswith(v)]
    if prefixed:
        return min(prefixed, key=lambda v: abs(len(v) - len(key)))
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return near[0] if near else None


def _unknown(key: str, valid, where: str) -> ConfigError:
    near = nearest(key, valid)
    hint = f"; did you mean {near!r}?" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid: {', '.join(valid)})")


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)  # YAML 1.1 reads `1e-3` as a string
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def parse_dimension(where: str, node: Any, *, allow_constant: bool = False) -> Dimension:
    if not isinstance(node, dict):
        if allow_constant and not isinstance(node, (list, dict)):
            return Dimension("constant", (node,))
        raise ConfigError(
            f"{where}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}"
            + (" or a constant" if allow_constant else "") + f", got {node!r}"
        )
    if len(node) != 1:
        raise ConfigError(f"{where}: a dimension has exactly one of {list(KINDS)}, got {sorted(node)}")
    (kind, args), = node.items()
    if kind not in KINDS:
        raise _unknown(kind, KINDS, where)
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        if any(isinstance(v, (list, dict)) for v in args):
            raise ConfigError(f"{where}.{kind}: values must be scalars, got {args!r}")
        if len(set(map(repr, args))) != len(args):
            raise ConfigError(f"{where}.{kind}: repeated values in {args!r}")
        return Dimension(kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"{where}.{kind}: expected [low, high], got {args!r}")
    low, high = (_number(f"{where}.{kind}", v) for v in args)
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low must be < high, got [{args[0]}, {args[1]}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {args[0]}")
    if kind == "randint":
        if not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"{where}.randint: expected integers, got {args!r}")
        return Dimension(kind, (int(low), int(high)))
    return Dimension(kind, (low, high))


def parse_space(node: Any, *, config_keys: list[str]) -> dict:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"space: expected a mapping of config key -> dimension, got {node!r}")
    space: dict = {}
    for key, dim in node.items():
        where = f"space.{key}"
        if key == "ray" or str(key).startswith("ray."):
            raise ConfigError(f"{where}: Ray resources are not swept; set trial_resources instead")
        if key not in config_keys:
            near = difflib.get_close_matches(str(key), config_keys, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"space: {key!r} is not a training config key{hint}")
        if isinstance(dim, dict) and "by" in dim:
            extra = set(dim) - {"by", "values"}
            if extra:
                raise _unknown(sorted(extra)[0], ("by", "values"), where)
            cases = dim.get("values")
            if not isinstance(cases, dict) or not cases:
                raise ConfigError(f"{where}.values: expected a mapping of {dim['by']} value -> dimension")
            parsed = {v: parse_dimension(f"{where}.values.{v}", d, allow_constant=True) for v, d in cases.items()}
            space[key] = Conditional(by=str(dim["by"]), cases=parsed)
        else:
            space[key] = parse_dimension(where, dim)
    return space


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
            near = nearest(key, list(SPEC_KEYS) + config_keys)
            hint = f"; did you mean {near!r}?" if near else ""
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
            raise _unknown(key, ASHA_KEYS, "scheduler")
    kind = node.get("type", "asha")
    if kind not in SCHEDULERS:
        raise _unknown(str(kind), SCHEDULERS, "scheduler.type")
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
            raise _unknown(str(key), list(SPEC_KEYS), where=f"sweep spec {path or ''}".strip())
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
            raise _unknown(key, RESOURCE_KEYS, "trial_resources")
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
        raise _unknown(str(search), SEARCHES, "search")
    mode = raw.get("mode", "max")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    metric = raw.get("metric", DEFAULT_METRIC)
    if metric not in KNOWN_METRICS:
        near = difflib.get_close_matches(str(metric), KNOWN_METRICS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"metric {metric!r} is not logged by the trainer{hint}")
    num_samples = raw.get("num_samples", 1)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
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
        description=str(raw.get("description") or ""),
        source={**raw, "base": raw["base"], "overrides": {**inline, **config_overrides}},
        path=path,
    )
    _check_conditions(spec)
    _check_metric_is_evaluated(spec)
    if spec.search == "optuna":
        grids = [
            k for k, d in spec.space.items()
            if (d.kind == "grid" if isinstance(d, Dimension) else any(c.kind == "grid" for c in d.cases.values()))
        ]
        if grids:
            raise ConfigError(f"space.{grids[0]}: search optuna samples and cannot expand a grid; use choice")
    _check_corners(spec)
    return spec


def _check_conditions(spec: SweepSpec) -> None:
    for key, dim in spec.space.items():
        if not isinstance(dim, Conditional):
            continue
        if dim.by == key:
            raise ConfigError(f"space.{key}: a key cannot depend on itself")
        if isinstance(spec.space.get(dim.by), Conditional):
            raise ConfigError(f"space.{key}: depends on {dim.by}, which is conditional itself")
        by_dim = spec.space.get(dim.by)
        if by_dim is None:
            continue  # fixed by the base config: the matching case is applied up front, others never
        possible = spec.possible_values(dim.by)
        for value, case in dim.cases.items():
            if case.kind == "grid" and by_dim.kind != "grid":
                raise ConfigError(
                    f"space.{key}.values.{value}: a grid inside a condition needs {dim.by} to be a grid too "
                    f"(a sampled {dim.by} cannot expand it); use choice"
                )
        unknown = [v for v in dim.cases if v not in possible]
        if unknown:
            raise ConfigError(
                f"space.{key}.values: {unknown[0]!r} is never a value of {dim.by} in this sweep "
                f"(it takes {list(possible)})"
            )


def _check_metric_is_evaluated(spec: SweepSpec) -> None:
    if not spec.metric.startswith("eval_"):
        return
    cfg = load_config(spec.base)
    if not (cfg.data.val_size or cfg.data.eval_dataset):
        raise ConfigError(f"metric {spec.metric} needs an evaluation set: set val_size or eval_dataset in the base config")
    args = cfg.training_arguments(device_independent=True)
    if not args.do_eval:
        raise ConfigError(f"metric {spec.metric} is never computed: set eval_strategy (steps or epoch) in the base config")
    if spec.scheduler.type != "none" and str(args.eval_strategy) in ("no", "IntervalStrategy.NO"):
        raise ConfigError(f"scheduler {spec.scheduler.type} acts on {spec.metric} during training: set eval_strategy")


def corner_configs(spec: SweepSpec, limit: int = 256) -> list[dict]:
    """Overrides at every category and range end (capped): what validation tries before Ray starts."""
    plain = {k: d for k, d in spec.space.items() if isinstance(d, Dimension)}
    combos = itertools.islice(itertools.product(*(d.corners() for d in plain.values())), limit)
    configs = []
    for combo in combos:
        chosen = dict(zip(plain, combo))
        for key, dim in spec.space.items():
            if isinstance(dim, Conditional):
                by_value = chosen.get(dim.by, spec.fixed_value(dim.by))
                case = dim.case(by_value)
                if case is not None:
                    chosen[key] = case.corners()[len(configs) % len(case.corners())]
        configs.append(chosen)
    return configs


def _check_corners(spec: SweepSpec) -> None:
    for chosen in corner_configs(spec):
        try:
            load_config(apply_overrides(spec.base, chosen))
        except ConfigError as err:
            hint = ""
            if "only used by pref_loss" in str(err):
                hint = " (make it conditional: {by: pref_loss, values: {...}})"
            raise ConfigError(f"space: trial {chosen} is not a valid config: {err}{hint}") from None


# --------------------------------------------------------------------------------------- trials


def case_key(by: str) -> str:
    """The Tune config key that holds the cases of keys conditional on `by` (see sweeps.tune_space)."""
    return f"{by}_case"


def trial_overrides(config: dict) -> dict:
    """A sampled Tune config -> config overrides.

    Nested cases (`{"pref_loss_case": {"pref_loss": "simpo", "pref_beta": 3.1}}`) are flattened;
    Optuna's conditional names (`pref_beta[simpo]`) become the key they set (`pref_beta`); unset
    values (None) are dropped.
    """
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(trial_overrides(value))
        elif value is not None:
            out[re.sub(r"\[.*\]$", "", key)] = value
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_name(index: int, overrides: dict, base: dict) -> str:
    """`trial_003_simpo_beta2.5_gamma0.5`: index, loss, beta, and gamma / ftx / smoothing when set.

    Names carry no timestamps or random ids, so a sweep can be restored and runs found by name.
    """
    merged = {**base, **overrides}
    stage = merged.get("stage", "dpo")
    loss = "kto" if stage == "kto" else merged.get("pref_loss", "sigmoid")
    parts = [f"trial_{index:03d}", str(loss), f"beta{_short(merged.get('pref_beta', 0.1))}"]
    if merged.get("simpo_gamma") is not None and loss == "simpo":
        parts.append(f"gamma{_short(merged['simpo_gamma'])}")
    if merged.get("pref_ftx"):
        parts.append(f"ftx{_short(merged['pref_ftx'])}")
    if merged.get("dpo_label_smoothing"):
        parts.append(f"eps{_short(merged['dpo_label_smoothing'])}")
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", "_".join(parts))


def dump(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.source, sort_keys=False)
