"""Validation of the loss keys of a config, from the registry's facts (called by `trainer.config`).

Each check names the key, the value and what is wrong in one line; a key that only some losses read is
refused with a loss that does not read it, naming the losses that do.
"""

from __future__ import annotations

import dataclasses
import math

from trainer.errors import ConfigError
from trainer.losses.base import F_DIVERGENCES
from trainer.losses.registry import (
    COMBINE,
    LOSSES,
    MODIFIERS,
    LossSpec,
    get_loss,
    loss_names,
    modifier_losses,
)

HPARAM_KEYS = {
    "beta": "pref_beta",
    "label_smoothing": "dpo_label_smoothing",
    "simpo_gamma": "simpo_gamma",
    "gamma_beta_ratio": "gamma_beta_ratio",
    "desirable_weight": "kto_chosen_weight",
    "undesirable_weight": "kto_rejected_weight",
    "f_divergence_type": "f_divergence_type",
    "f_alpha_divergence_coef": "f_alpha_divergence_coef",
    "discopop_tau": "discopop_tau",
    "cpo_alpha": "cpo_alpha",
}
"""Loss keyword -> the config key it is read from."""

_ONLY_WHERE_READ = ("dpo_label_smoothing", "simpo_gamma", "gamma_beta_ratio", "discopop_tau", "cpo_alpha")
EXO_DEFAULT_LABEL_SMOOTHING = 1e-3  # EXO paper's recommendation (TRL 1.16 DPOConfig help)
SIMPO_DEFAULT_GAMMA = 0.5  # LLaMA-Factory's default
TR_DPO_KEYS = ("ref_model_mixup_alpha", "ref_model_sync_steps")


def loss_list(pref_loss: str | list) -> list[str]:
    """pref_loss as a list of names: a list, or a string naming one loss or several joined by "+" (the form a
    sweep's choice takes: `sigmoid+bco_pair+sft` is [sigmoid, bco_pair, sft])."""
    names = [n.strip() for n in pref_loss.split(COMBINE)] if isinstance(pref_loss, str) else list(pref_loss)
    bad = [n for n in names if not isinstance(n, str)]
    if bad or not names:
        raise ConfigError(f"pref_loss: expected a loss name or a list of names, got {pref_loss!r}")
    return names


def combined_name(pref_loss: str | list) -> str:
    return COMBINE.join(loss_list(pref_loss))


def _hparam_of(config_key: str) -> str:
    return next(h for h, k in HPARAM_KEYS.items() if k == config_key)


def _readers(config_key: str) -> list[str]:
    return [n for n, s in LOSSES.items() if _hparam_of(config_key) in s.hparams]


def _defaults(ft) -> dict:
    return {f.name: f.default for f in dataclasses.fields(ft)}


def check_losses(ft, *, lora: bool) -> LossSpec:
    """Validate pref_loss (a name or a list), its weights, hyperparameters and modifiers; fill the defaults
    that depend on the loss (simpo_gamma, exo_pair's label smoothing). Returns the loss's spec."""
    names = loss_list(ft.pref_loss)
    if ft.stage == "kto" and len(names) > 1:
        raise ConfigError("pref_loss: stage kto trains unpaired KTO; a list of losses needs stage dpo")
    if ft.stage == "dpo":
        for name in names:
            try:
                stage = get_loss(name).stage  # unknown names: did-you-mean
            except ConfigError as err:
                raise ConfigError(f"pref_loss: {err}") from None
            if stage != "dpo":
                raise ConfigError(f"pref_loss {name!r} is not a paired loss; stage dpo takes {loss_names('dpo')}")
    try:
        spec = get_loss(ft.loss_name)
    except ConfigError as err:
        raise ConfigError(f"pref_loss: {err}") from None
    _check_weights(ft, names)
    defaults = _defaults(ft)
    for key in _ONLY_WHERE_READ:
        if getattr(ft, key) != defaults[key] and _hparam_of(key) not in spec.hparams:
            raise ConfigError(f"{key} is only used by pref_loss {', '.join(_readers(key))}, but pref_loss is "
                              f"{spec.name!r}")
    _check_hparam_values(ft, spec)
    _check_modifiers(ft, spec, defaults, lora=lora)
    return spec


def _check_weights(ft, names: list[str]) -> None:
    weights = ft.pref_loss_weights
    if weights is None:
        return
    if len(weights) != len(names):
        raise ConfigError(f"pref_loss_weights has {len(weights)} weights but pref_loss names {len(names)} losses "
                          f"({', '.join(names)}); give one weight per loss")
    numbers = []
    for w in weights:  # "0.8,0.2,1.0" (a sweep's constant) arrives as strings
        try:
            number = float(w) if not isinstance(w, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"pref_loss_weights: each weight must be a finite number >= 0, got {w!r}")
        numbers.append(number)
    ft.pref_loss_weights = numbers


def _check_hparam_values(ft, spec: LossSpec) -> None:
    if not 0 <= ft.dpo_label_smoothing < 0.5:
        raise ConfigError(f"dpo_label_smoothing must be in [0, 0.5), got {ft.dpo_label_smoothing}")
    if "exo_pair" in spec.name.split(COMBINE) and ft.dpo_label_smoothing == 0:
        ft.dpo_label_smoothing = EXO_DEFAULT_LABEL_SMOOTHING  # log(eps) in EXO: 0 is undefined
    if "simpo_gamma" in spec.hparams:
        if ft.simpo_gamma is not None and ft.gamma_beta_ratio is not None:
            raise ConfigError(f"simpo_gamma ({ft.simpo_gamma}) and gamma_beta_ratio ({ft.gamma_beta_ratio}) are "
                              "both set; give one (gamma_beta_ratio = simpo_gamma / pref_beta)")
        if ft.simpo_gamma is None and ft.gamma_beta_ratio is None:
            ft.simpo_gamma = SIMPO_DEFAULT_GAMMA
    if not ft.discopop_tau > 0:
        raise ConfigError(f"discopop_tau must be > 0, got {ft.discopop_tau}")
    if ft.cpo_alpha < 0:
        raise ConfigError(f"cpo_alpha must be >= 0, got {ft.cpo_alpha}")


def _check_modifiers(ft, spec: LossSpec, defaults: dict, *, lora: bool) -> None:
    if ft.f_divergence_type not in F_DIVERGENCES:
        raise ConfigError(f"f_divergence_type {ft.f_divergence_type!r} is not one of {list(F_DIVERGENCES)}")
    if ft.f_alpha_divergence_coef != defaults["f_alpha_divergence_coef"] and ft.f_divergence_type != "alpha_divergence":
        raise ConfigError(f"f_alpha_divergence_coef is only used with f_divergence_type alpha_divergence, but it is "
                          f"{ft.f_divergence_type!r}")
    for key, modifier in MODIFIERS.items():
        if getattr(ft, key) != modifier.neutral and key not in spec.modifiers:
            raise ConfigError(f"{key}: {getattr(ft, key)!r} does not apply to pref_loss {spec.name!r}; it applies "
                              f"to {', '.join(modifier_losses(key))}")
    if ft.ld_alpha is not None and not 0 <= ft.ld_alpha <= 1:
        raise ConfigError(f"ld_alpha must be in [0, 1] (1: plain DPO, 0: shared length only), got {ft.ld_alpha}")
    if not ft.sync_ref_model:
        for key in TR_DPO_KEYS:
            if getattr(ft, key) != defaults[key]:
                raise ConfigError(f"{key} is only used with sync_ref_model: true")
        return
    if not spec.needs_reference:
        raise ConfigError(f"sync_ref_model: pref_loss {spec.name!r} uses no reference model to synchronise")
    if lora:
        raise ConfigError("sync_ref_model: a LoRA reference is the policy with adapters off, there is no separate "
                          "reference to move; use finetuning_type full or freeze")
    if ft.precompute_ref == "always":
        raise ConfigError("sync_ref_model: the reference moves during training, so its log-probs cannot be "
                          "precomputed; set precompute_ref: auto or never")
    if not 0 < ft.ref_model_mixup_alpha <= 1:
        raise ConfigError(f"ref_model_mixup_alpha must be in (0, 1], got {ft.ref_model_mixup_alpha}")
    if ft.ref_model_sync_steps < 1:
        raise ConfigError(f"ref_model_sync_steps must be >= 1, got {ft.ref_model_sync_steps}")
