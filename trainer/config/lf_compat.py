"""LLaMA-Factory compatibility: the keys and stages LLaMA-Factory users write that prefsweep maps or refuses.

transformers 5 dropped or renamed some TrainingArguments LLaMA-Factory configs still carry; they keep their
meaning here, mapped to the current name before the config is typed.
"""

from __future__ import annotations

from typing import Any

from trainer.config.coerce import coerce
from trainer.errors import ConfigError

LF_ONLY_STAGES = ("pt", "sft", "rm", "ppo")
"""LLaMA-Factory stages prefsweep refuses by name (it runs only the preference stages)."""

# Keys LLaMA-Factory users still write that transformers 5 dropped or renamed: old key -> handler.
LEGACY_KEYS = {
    "warmup_ratio": "warmup_steps",  # transformers 5: warmup_steps < 1 is a ratio
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
}
# Boolean keys transformers 5 turned into a choice: old flag -> (new key, the choice `true` stands for).
LEGACY_FLAGS = {"group_by_length": ("train_sampling_strategy", "group_by_length")}
IGNORED_LEGACY_KEYS = {
    "logging_dir": "transformers 5 removed it; logs go to output_dir",
    "save_safetensors": "weights are always saved as safetensors",
}
FORCED_TRAINING_KEYS = {"remove_unused_columns"}


def legacy_key_names() -> list[str]:
    """Every old key accepted in a config (mapped or ignored)."""
    return list(LEGACY_KEYS) + list(LEGACY_FLAGS) + list(IGNORED_LEGACY_KEYS)


def map_legacy_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of the flat raw config with every legacy key replaced by its current name (or dropped)."""
    raw = dict(raw)
    for old, new in LEGACY_KEYS.items():
        if old in raw:
            value = raw.pop(old)
            if raw.get(new) in (None, 0, 0.0, False):
                raw[new] = value
    for old, (new, choice) in LEGACY_FLAGS.items():
        if old in raw:
            on = coerce(old, raw.pop(old), bool)
            given = raw.get(new)
            if given is not None and (given == choice) != on:
                raise ConfigError(f"{old}: {str(on).lower()} conflicts with {new}: {given}; set one of them")
            if on:
                raw[new] = choice
    for old in IGNORED_LEGACY_KEYS:
        raw.pop(old, None)
    return raw
