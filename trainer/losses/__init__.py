"""Preference-optimization losses as pure functions, behind one registry.

Notation (docs/architecture.md, "Losses: notation"): pi_c, pi_r are policy log-probs of the chosen / rejected response,
ref_c, ref_r the reference's; dc = pi_c - ref_c, dr = pi_r - ref_r, h = dc - dr; s = sigmoid. Every
function takes (B,) tensors and keyword-only hyperparameters, returns a `LossOutput` of per-example
losses (the caller reduces), and keeps no state. `LOSSES` is the single list of names: help text,
validation errors and tests are generated from it, and the trainer asks a `LossSpec` for facts
(`needs_reference`, `averages_logps`, `inputs`, `modifiers`) instead of comparing names.

Modules: `base` (output type, checks, f-divergence scores), `paired` (losses on the chosen-minus-rejected
score), `paired_ratio` (losses on each log-ratio, or on sorted batches), `reference_free` (orpo, simpo, cpo,
sft), `unpaired` (kto), `modifiers` (LD-DPO, WPO, combined losses), `objective` (a paired loss with its modifiers, from one
forward), `registry` (names and facts), `config_checks` (validation of the loss config keys).
"""

from trainer.losses.base import F_DIVERGENCES, LossOutput, f_scores
from trainer.losses.modifiers import combined_loss, ld_weighted_logps, wpo_weights
from trainer.losses.objective import Objective, paired_objective
from trainer.losses.reference_free import sft_loss, token_mean_nll
from trainer.losses.registry import (
    COMBINE,
    LOSSES,
    MODIFIERS,
    LossSpec,
    Modifier,
    combinable_names,
    get_loss,
    loss_help,
    loss_names,
    modifier_losses,
)
from trainer.losses.unpaired import kto_loss

__all__ = [
    "COMBINE", "F_DIVERGENCES", "LOSSES", "MODIFIERS", "LossOutput", "LossSpec", "Modifier", "combinable_names",
    "combined_loss", "f_scores", "get_loss", "kto_loss", "ld_weighted_logps", "loss_help", "loss_names", "modifier_losses", "Objective", "paired_objective",
    "sft_loss", "token_mean_nll", "wpo_weights",
]
