"""A parsed sweep spec as typed values (`SweepSpec`); parsing is `sweeps.spec`, whole-spec checks `sweeps.spec_checks`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sweeps.dimensions import Conditional
from trainer.config import load_config
from trainer.errors import ConfigError

DEFAULT_METRIC = "eval_rewards/accuracies"


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
    register_best: bool = False
    """After the sweep: the best trial's weights as an MLflow logged model, registered as `name` (rayjobs.best_model)."""
    reference_cache: bool = True
    """Build the reference log-prob caches the trials read (trainer.ref_cache) before they start."""
    description: str = ""
    tiny_model: str | None = None
    """Build the offline tiny model here (where the driver runs) before the trials when it is missing."""
    tiny_reward_model: str | None = None
    """Likewise the demo's tiny reward model (needs tiny_model)."""
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
