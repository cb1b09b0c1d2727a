"""The one list of loss names and what the trainer, config validation, help text and tests need to know.

`LOSSES` maps each name to a `LossSpec`; `MODIFIERS` lists the config keys that change how a loss is
computed and the losses each applies to. Nothing outside this package compares loss names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.errors import ConfigError, did_you_mean
from trainer.losses.base import LossOutput
from trainer.losses.paired import (
    discopop_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
)
from trainer.losses.paired_ratio import (
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    kto_pair_loss,
    nca_pair_loss,
    sppo_hard_loss,
)
from trainer.losses.reference_free import cpo_loss, orpo_loss, sft_nll_loss, simpo_loss
from trainer.losses.unpaired import kto_loss

COMBINE = "+"
"""A combined loss's name joins its components' names: [sigmoid, bco_pair, sft] is "sigmoid+bco_pair+sft"."""

F_DIV = ("f_divergence_type", "f_alpha_divergence_coef")
LENGTHS = ("chosen_lengths", "rejected_lengths")


@dataclass(frozen=True)
class LossSpec:
    """A loss function and the facts the trainer needs about it."""

    name: str
    fn: Callable[..., LossOutput] | None  # None for a combined loss: call each of `components`
    needs_reference: bool  # False: reference args are ignored (no reference model unless a component needs one)
    averages_logps: bool  # True: inputs are log-probs averaged over response tokens, not summed
    hparams: tuple[str, ...]  # keyword-only hyperparameters `fn` takes (config keys: LOSS_KWARG_SOURCES)
    stage: str  # "dpo" (paired chosen/rejected) or "kto" (unpaired, labelled examples)
    doc: str  # one line for help text and the README table
    inputs: tuple[str, ...] = ()  # extra (B,) tensors `fn` takes by keyword: chosen_lengths, rejected_lengths
    modifiers: frozenset[str] = frozenset()  # names of MODIFIERS that apply to this loss
    trl_name: str | None = None  # TRL 1.16 DPOConfig loss_type computing the same numbers; None if TRL has none
    unweighted_logps: bool = False  # reads plain summed log-probs even under ld_alpha (TRL's sft does)
    components: tuple[LossSpec, ...] = field(default=())  # a combined loss's parts, in order


@dataclass(frozen=True)
class Modifier:
    """A config key that changes how losses are computed, with its neutral value."""

    key: str
    neutral: object  # the value that changes nothing; any other value needs a loss it applies to
    doc: str


MODIFIERS: dict[str, Modifier] = {m.key: m for m in (
    Modifier("f_divergence_type", "reverse_kl", "f-DPO (Wang et al. 2023) regulariser: reverse_kl (DPO), "
             "forward_kl, js_divergence, alpha_divergence (coefficient f_alpha_divergence_coef)"),
    Modifier("ld_alpha", None, "LD-DPO (Liu et al. 2024): weight in [0, 1] of the tokens beyond the shorter "
             "response of each pair, in policy and reference log-probs"),
    Modifier("use_weighting", False, "WPO (Zhou et al. 2024): weight each pair by the policy's "
             "length-normalised probabilities of its two responses"),
    Modifier("sync_ref_model", False, "TR-DPO (Gorbatovski et al. 2024): every ref_model_sync_steps steps the "
             "reference becomes ref_model_mixup_alpha * policy + (1 - alpha) * reference"),
)}

_DPO_FAMILY = frozenset(MODIFIERS)  # every modifier applies
_NO_F_DIV = frozenset({"ld_alpha", "use_weighting", "sync_ref_model"})
# TRL 1.16 fails on sft with use_weighting (an in-place multiply into its expanded batch loss): refused here.
_SFT = frozenset({"f_divergence_type", "ld_alpha", "sync_ref_model"})
_SORTED = frozenset({"ld_alpha", "sync_ref_model"})  # losses per rank, not per pair: no WPO (as TRL)
_SIGMOID_HP = ("beta", "label_smoothing", *F_DIV)
_PAIRED = (
    LossSpec("sigmoid", sigmoid_loss, True, False, _SIGMOID_HP, "dpo",
             "DPO (Rafailov et al. 2023); label_smoothing > 0 gives conservative DPO",
             modifiers=_DPO_FAMILY, trl_name="sigmoid"),
    LossSpec("hinge", hinge_loss, True, False, ("beta", *F_DIV), "dpo",
             "hinge loss of SLiC (Zhao et al. 2023) on the DPO log-ratio margin",
             modifiers=_DPO_FAMILY, trl_name="hinge"),
    LossSpec("ipo", ipo_loss, True, False, ("beta", *F_DIV), "dpo",
             "IPO (Azar et al. 2023) on the per-token log-ratio margin", inputs=LENGTHS,
             modifiers=_DPO_FAMILY, trl_name="ipo"),
    LossSpec("exo_pair", exo_pair_loss, True, False, _SIGMOID_HP, "dpo",
             "EXO (Ji et al. 2024): reverse KL to the smoothed preference labels",
             modifiers=_DPO_FAMILY, trl_name="exo_pair"),
    LossSpec("nca_pair", nca_pair_loss, True, False, ("beta",), "dpo",
             "NCA (Chen et al. 2024): noise-contrastive, absolute likelihood per response",
             modifiers=_NO_F_DIV, trl_name="nca_pair"),
    LossSpec("robust", robust_loss, True, False, _SIGMOID_HP, "dpo",
             "robust DPO (Chowdhury et al. 2024), unbiased under label flips with probability label_smoothing",
             modifiers=_DPO_FAMILY, trl_name="robust"),
    LossSpec("bco_pair", bco_pair_loss, True, False, ("beta",), "dpo",
             "paired BCO (Jung et al. 2024): chosen vs rejected reward as binary classification",
             modifiers=_NO_F_DIV, trl_name="bco_pair"),
    LossSpec("sppo_hard", sppo_hard_loss, True, False, ("beta",), "dpo",
             "SPPO (Wu et al. 2024) with hard win probabilities 1 and 0",
             modifiers=_NO_F_DIV, trl_name="sppo_hard"),
    LossSpec("aot", aot_loss, True, False, ("beta", "label_smoothing"), "dpo",
             "AOT paired (Melnyk et al. 2024): sorted policy vs reference margins over the batch",
             modifiers=_SORTED, trl_name="aot"),
    LossSpec("aot_unpaired", aot_unpaired_loss, True, False, ("beta", "label_smoothing"), "dpo",
             "AOT unpaired (Melnyk et al. 2024): sorted chosen vs rejected log-ratios over the batch",
             modifiers=_SORTED, trl_name="aot_unpaired"),
    LossSpec("apo_zero", apo_zero_loss, True, False, ("beta",), "dpo",
             "APO-zero (D'Oosterlinck et al. 2024): raise chosen, lower rejected likelihood",
             modifiers=_NO_F_DIV, trl_name="apo_zero"),
    LossSpec("apo_down", apo_down_loss, True, False, ("beta",), "dpo",
             "APO-down (D'Oosterlinck et al. 2024): lower both likelihoods, rejected more",
             modifiers=_NO_F_DIV, trl_name="apo_down"),
    LossSpec("discopop", discopop_loss, True, False, ("beta", "discopop_tau", *F_DIV), "dpo",
             "DiscoPOP (Lu et al. 2024): logistic/exponential blend modulated by the margin",
             modifiers=_DPO_FAMILY, trl_name="discopop"),
    LossSpec("sft", sft_nll_loss, False, False, ("beta",), "dpo",
             "NLL of the chosen responses per token (a term of combined losses, e.g. MPO)",
             inputs=("chosen_lengths",), modifiers=_SFT, trl_name="sft", unweighted_logps=True),
    LossSpec("sigmoid_norm", sigmoid_norm_loss, True, False, ("beta", *F_DIV), "dpo",
             "DPO on the per-token log-ratio margin (length-normalised DPO)", inputs=LENGTHS,
             modifiers=_DPO_FAMILY, trl_name="sigmoid_norm"),
    LossSpec("kto_pair", kto_pair_loss, True, False, ("beta",), "dpo",
             "paired KTO (Ethayarajh et al. 2024) on chosen/rejected pairs", modifiers=frozenset({"sync_ref_model"})),
    LossSpec("orpo", orpo_loss, False, True, ("beta",), "dpo",
             "ORPO (Hong et al. 2024): SFT + odds-ratio term, no reference model"),
    LossSpec("simpo", simpo_loss, False, True, ("beta", "simpo_gamma", "gamma_beta_ratio"), "dpo",
             "SimPO (Meng et al. 2024): length-averaged margin with target gamma, no reference model"),
    LossSpec("cpo", cpo_loss, False, False, ("beta", "label_smoothing", "cpo_alpha"), "dpo",
             "CPO (Xu et al. 2024): reference-free DPO on summed log-probs + cpo_alpha * NLL",
             inputs=("chosen_lengths",)),
)
LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in (
    *_PAIRED,
    LossSpec("kto", kto_loss, True, False, ("beta", "desirable_weight", "undesirable_weight"), "kto",
             "unpaired KTO (Ethayarajh et al. 2024) on examples labelled desirable/undesirable",
             modifiers=frozenset({"sync_ref_model"})),
)}


def loss_names(stage: str | None = None) -> list[str]:
    """Names in registry order, optionally only those of one stage ("dpo" or "kto")."""
    stages = sorted({spec.stage for spec in LOSSES.values()})
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(stages)}")
    return [name for name, spec in LOSSES.items() if stage is None or spec.stage == stage]


def _one(name: str) -> LossSpec:
    if name in LOSSES:
        return LOSSES[name]
    hint = did_you_mean(name, LOSSES, cutoff=0.0)  # cutoff 0: always one
    raise ConfigError(f"unknown loss {name!r}{hint} valid losses: {', '.join(LOSSES)}")


def get_loss(name: str) -> LossSpec:
    """The spec for `name`; an unknown name raises ConfigError (a ValueError) naming the nearest one.

    "a+b+c" (`COMBINE`) is the combined loss of paired losses a, b, c: fn None, `components` the parts,
    needs_reference if any part needs it, hparams and modifiers the union / intersection of the parts'.
    """
    if COMBINE not in name:
        return _one(name)
    parts = tuple(_one(part.strip()) for part in name.split(COMBINE))
    for part in parts:
        if part.name not in combinable_names():
            raise ConfigError(
                f"loss {part.name!r} cannot be combined with others: combined losses take paired losses on summed "
                f"log-probs ({', '.join(combinable_names())})"
            )
    if len({p.name for p in parts}) != len(parts):
        raise ConfigError(f"loss {name!r} names a loss twice")
    return LossSpec(
        name=COMBINE.join(p.name for p in parts), fn=None,
        needs_reference=any(p.needs_reference for p in parts), averages_logps=False,
        hparams=tuple(dict.fromkeys(h for p in parts for h in p.hparams)), stage="dpo",
        doc=" + ".join(p.doc for p in parts), inputs=tuple(dict.fromkeys(i for p in parts for i in p.inputs)),
        modifiers=frozenset.intersection(*(p.modifiers for p in parts)),
        components=parts,
    )


def combinable_names() -> list[str]:
    """Losses that can be a term of a combined loss: paired, on summed log-probs, one loss per example."""
    return [n for n, s in LOSSES.items() if s.stage == "dpo" and not s.averages_logps and n != "kto_pair"]


def modifier_losses(key: str) -> list[str]:
    """Names of the losses the modifier `key` applies to, in registry order."""
    return [name for name, spec in LOSSES.items() if key in spec.modifiers]


def loss_help() -> str:
    """Help text: one line per loss (its doc and hyperparameters), then the modifiers and whom they apply to."""
    lines = ["losses (pref_loss; a list, or names joined by '+', combines them with pref_loss_weights):"]
    for name, spec in LOSSES.items():
        extra = [h for h in spec.hparams if h not in ("beta", *F_DIV)]
        stage = " (stage kto)" if spec.stage == "kto" else ""
        lines.append(f"  {name:14s}{spec.doc}{stage}" + (f" [{', '.join(extra)}]" if extra else ""))
    lines.append("modifiers:")
    for key, modifier in MODIFIERS.items():
        lines.append(f"  {key:18s}{modifier.doc}; with {', '.join(modifier_losses(key))}")
    return "\n".join(lines)
