"""From a sampled Ray Tune config to a trial: the config overrides it sets and the trial's name."""

from __future__ import annotations

import re
from typing import Any


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
