"""Checks of a parsed sweep spec that need the whole spec: conditions name values their key takes, an
`eval_` metric is computed, and every corner of the space (each category, both ends of each range) is a
valid training config, so a bad trial fails before Ray starts."""

from __future__ import annotations

import itertools

from sweeps.dimensions import Conditional, Dimension
from sweeps.spec_model import SweepSpec
from trainer.config import apply_overrides, load_config
from trainer.errors import ConfigError


def check_conditions(spec: SweepSpec) -> None:
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


def check_metric_is_evaluated(spec: SweepSpec) -> None:
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


def check_corners(spec: SweepSpec) -> None:
    for chosen in corner_configs(spec):
        try:
            load_config(apply_overrides(spec.base, chosen))
        except ConfigError as err:
            hint = ""
            if "only used by pref_loss" in str(err):
                hint = " (make it conditional: {by: pref_loss, values: {...}})"
            raise ConfigError(f"space: trial {chosen} is not a valid config: {err}{hint}") from None
