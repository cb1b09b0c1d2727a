"""A `SweepSpec` as Ray Tune sees it: a param space (random/grid search) or an Optuna define-by-run.

Random / grid search (Tune's BasicVariantGenerator, seeded): plain dimensions become Tune domains
(`grid_search`, `choice`, `uniform`, `loguniform`, `randint`); conditional ones become nested cases
of their `by` key (see `param_space`).

Optuna (TPE) gets a define-by-run function that suggests the plain dimensions, then each
conditional under the name `key[by_value]` (Optuna wants one distribution per name).
`sweeps.trials.trial_overrides` turns either kind of sampled config back into config overrides.
"""

from __future__ import annotations

import itertools
from typing import Any

from ray import tune

from sweeps.dimensions import Conditional, Dimension
from sweeps.spec import SweepSpec
from sweeps.trials import case_key

NEVER = 2**31  # an ASHA max_t no step or evaluation count reaches


def tune_domain(dim: Dimension):
    low_high = dim.args
    if dim.kind == "grid":
        return tune.grid_search(list(dim.args))
    if dim.kind == "choice":
        return tune.choice(list(dim.args))
    if dim.kind == "uniform":
        return tune.uniform(*low_high)
    if dim.kind == "loguniform":
        return tune.loguniform(*low_high)
    if dim.kind == "randint":
        return tune.randint(*low_high)
    raise ValueError(f"no Tune domain for {dim.kind}")


def _case_value(dim: Dimension):
    return dim.args[0] if dim.kind == "constant" else tune_domain(dim)


def param_space(spec: SweepSpec) -> dict:
    """Tune `param_space` for random / grid search.

    Conditional keys are grouped under their `by` key as nested cases, one per value:

        pref_loss: {grid: [sigmoid, simpo]} + pref_beta / simpo_gamma by pref_loss  ->
        {"pref_loss_case": tune.grid_search([
            {"pref_loss": "sigmoid", "pref_beta": tune.loguniform(...)},
            {"pref_loss": "simpo", "pref_beta": tune.uniform(...), "simpo_gamma": tune.uniform(...)}])}

    Tune picks a case, then samples the domains inside it, so a key exists only in the cases that list
    it. (`tune.sample_from` would do the same, but Tune resolves it after naming the trial, and trial
    names carry the sampled values.) A `by` key fixed by the base config selects its case up front.
    """
    conditional = {k: d for k, d in spec.space.items() if isinstance(d, Conditional)}
    groups: dict[str, dict] = {}
    for key, dim in conditional.items():
        groups.setdefault(dim.by, {})[key] = dim
    space: dict[str, Any] = {
        key: tune_domain(dim) for key, dim in spec.space.items() if isinstance(dim, Dimension) and key not in groups
    }
    for by, members in groups.items():
        if by not in spec.space:  # fixed by the base config
            fixed = spec.fixed_value(by)
            for key, dim in members.items():
                case = dim.case(fixed)
                if case is not None:
                    space[key] = _case_value(case)
            continue
        by_dim = spec.space[by]
        cases = []
        for value in by_dim.values():
            chosen = {key: dim.case(value) for key, dim in members.items() if dim.case(value) is not None}
            fixed = {key: _case_value(d) for key, d in chosen.items() if d.kind != "grid"}
            grids = {key: d.values() for key, d in chosen.items() if d.kind == "grid"}
            for combo in itertools.product(*grids.values()):  # one case per point of the per-value grids
                cases.append({by: value, **fixed, **dict(zip(grids, combo))})
        space[case_key(by)] = tune.grid_search(cases) if by_dim.kind == "grid" else tune.choice(cases)
    return space


def _suggest(trial, name: str, dim: Dimension) -> Any:
    if dim.kind == "constant":
        return dim.args[0]
    if dim.kind in ("choice", "grid"):
        return trial.suggest_categorical(name, list(dim.args))
    low, high = dim.args
    if dim.kind == "uniform":
        return trial.suggest_float(name, low, high)
    if dim.kind == "loguniform":
        return trial.suggest_float(name, low, high, log=True)
    return trial.suggest_int(name, low, high - 1)  # randint: high excluded, Optuna's is included


class OptunaDefineByRun:
    """Define-by-run function for `OptunaSearch(space=...)`: suggests the plain dimensions, then each
    conditional one whose case applies; returns the constants (Optuna records no constant).

    A class, not a closure: Tune pickles the searcher, space included, into its experiment state.
    """

    def __init__(self, spec: SweepSpec):
        self.plain = {k: d for k, d in spec.space.items() if isinstance(d, Dimension)}
        self.conditional = {k: d for k, d in spec.space.items() if isinstance(d, Conditional)}
        self.fixed = {d.by: spec.fixed_value(d.by) for d in self.conditional.values() if d.by not in spec.space}

    def __call__(self, trial) -> dict | None:
        chosen = {key: _suggest(trial, key, dim) for key, dim in self.plain.items()}
        constants = {}
        for key, dim in self.conditional.items():
            by_value = chosen[dim.by] if dim.by in chosen else self.fixed[dim.by]
            case = dim.case(by_value)
            if case is None:
                continue
            if case.kind == "constant":
                constants[key] = case.args[0]
            else:
                _suggest(trial, f"{key}[{by_value}]", case)
        return constants or None


def optuna_define_by_run(spec: SweepSpec) -> OptunaDefineByRun:
    return OptunaDefineByRun(spec)


def search_algorithm(spec: SweepSpec, max_concurrent: int | None):
    """The Tune search algorithm for `spec.search` (None: Tune's default variant generator)."""
    if spec.search != "optuna":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=max_concurrent or 0)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=optuna_define_by_run(spec),
        metric=spec.metric,
        mode=spec.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.search_seed),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher


def scheduler(spec: SweepSpec):
    """ASHA (async successive halving) or None for FIFO."""
    sched = spec.scheduler
    if sched.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    time_attr = sched.time_attr or ("evaluations" if spec.metric.startswith("eval_") else "step")
    return ASHAScheduler(  # metric and mode come from TuneConfig
        time_attr=time_attr,
        # ASHA stops any trial whose progress reaches max_t (Ray's default: 100), which would cut a
        # trial short of its last steps and its outputs; unset, trials end on their own.
        max_t=sched.max_t or NEVER,
        grace_period=sched.grace_period,
        reduction_factor=sched.reduction_factor,
        brackets=sched.brackets,
    )
