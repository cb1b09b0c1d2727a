"""Preference-optimization losses as pure functions, behind one registry.

Notation (docs/DESIGN.md, "The losses"): pi_c, pi_r are policy log-probs of the chosen / rejected response,
ref_c, ref_r the reference's; dc = pi_c - ref_c, dr = pi_r - ref_r, h = dc - dr; s = sigmoid. Every
function takes (B,) tensors and keyword-only hyperparameters, returns a `LossOutput` of per-example
losses (the caller reduces), and keeps no state. `LOSSES` is the single list of names: help text,
validation errors and tests are generated from it, and the trainer asks a `LossSpec` for facts
(`needs_reference`, `averages_logps`) instead of comparing names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.errors import ConfigError


@dataclass(frozen=True)
class LossOutput:
    """Per-example results of one loss call; the caller takes the mean."""

    losses: Tensor  # (B,); kto_pair: (2B,) = cat(chosen terms, rejected terms); kto: (N,) in input order
    chosen_rewards: Tensor  # (B,) detached; kto: desirable rows only
    rejected_rewards: Tensor  # (B,) detached; kto: undesirable rows only
    extras: dict[str, Tensor]  # detached metrics; orpo: (B,) terms; kto: {"kl": 0-d}; else {}


@dataclass(frozen=True)
class LossSpec:
    """A loss function and the facts the trainer needs about it."""

    name: str
    fn: Callable[..., LossOutput]
    needs_reference: bool  # False: reference args are ignored and no reference model is loaded
    averages_logps: bool  # True: inputs are log-probs averaged over response tokens, not summed
    hparams: tuple[str, ...]  # keyword-only hyperparameters `fn` takes
    stage: str  # "dpo" (paired chosen/rejected) or "kto" (unpaired, labelled examples)
    doc: str  # one line for help text


def _check_1d(**tensors: Tensor | None) -> None:
    """Raise ValueError naming the first argument that is missing, not 1-D, or shaped unlike the first."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t is None:
            raise ValueError(f"{name} is required for this loss but is None")
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _ratios(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, beta: float):
    _check_beta(beta)
    _check_1d(policy_chosen_logps=pi_c, policy_rejected_logps=pi_r,
              reference_chosen_logps=ref_c, reference_rejected_logps=ref_r)
    return pi_c - ref_c, pi_r - ref_r  # dc, dr: (B,)


def _rewards(dc: Tensor, dr: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    return beta * dc.detach(), beta * dr.detach()


def sigmoid_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 *, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """DPO, Rafailov et al. 2023 eq. 7, with conservative DPO (cDPO) label smoothing eps in [0, 0.5]:

        loss = -(1 - eps) * log s(beta*h) - eps * log s(-beta*h)        all inputs (B,) summed log-probs

    eps is the assumed probability that a preference label is flipped (Mitchell 2023, "A note on DPO
    with noisy preferences"). TRL 1.16's "sigmoid" silently ignores label_smoothing (only "robust",
    "exo_pair" and "aot" read it); this is the smoothed "sigmoid" of TRL 0.24's dpo_loss, which
    LLaMA-Factory 0.9.5 calls.
    """
    dc, dr = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, beta)
    logits = beta * (dc - dr)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(losses, *_rewards(dc, dr, beta), {})


def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
               *, beta: float) -> LossOutput:
    """Hinge loss of SLiC-HF (Zhao et al. 2023), max(0, delta - log P(y+|x) + log P(y-|x)), applied to the
    reference-normalised margin h with delta = 1/beta and scaled by beta, as TRL defines "hinge":

        loss = relu(1 - beta*h)        all inputs (B,) summed log-probs
    """
    dc, dr = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, beta)
    return LossOutput(torch.relu(1 - beta * (dc - dr)), *_rewards(dc, dr, beta), {})


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             *, beta: float) -> LossOutput:
    """IPO, Azar et al. 2023 eq. 17, where beta is the regularisation strength the paper calls tau:

        loss = (h - 1/(2*beta))**2        all inputs (B,) log-probs averaged over response tokens

    Summed log-probs make the squared target scale with length; TRL 1.16 divides the summed ratios by
    the completion length, which equals feeding averaged policy and reference log-probs here.
    """
    dc, dr = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, beta)
    return LossOutput((dc - dr - 1 / (2 * beta)) ** 2, *_rewards(dc, dr, beta), {})


def kto_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """Paired KTO, Ethayarajh et al. 2024 eq. 7 (HALOs), as TRL's DPOTrainer computed it until it was removed:

        KL_c = clamp(mean(dc), min=0), KL_r = clamp(mean(dr), min=0)
        losses = cat(1 - s(beta*(dc - KL_r)), 1 - s(beta*(KL_c - dr)))        (2B,) from (B,) inputs

    The reference point for chosen examples is estimated from the rejected half and vice versa.
    Like TRL 0.7-0.8 (and ContextualAI's HALOs code), the batch KL terms are NOT detached, so the gradient
    also flows through the batch means; the unpaired `kto_loss` detaches its KL as TRL's KTOTrainer does.
    """
    dc, dr = _ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, beta)
    kl_c, kl_r = dc.mean().clamp(min=0), dr.mean().clamp(min=0)
    losses = torch.cat((1 - torch.sigmoid(beta * (dc - kl_r)), 1 - torch.sigmoid(beta * (kl_c - dr))))
    return LossOutput(losses, *_rewards(dc, dr, beta), {})


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -log 2 to avoid cancellation (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
              reference_rejected_logps=None, *, beta: float) -> LossOutput:
    """ORPO, Hong et al. 2024 eqs. 6-7 (beta is the paper's lambda); reference-free, reference args ignored:

        log_odds = (pi_c - pi_r) - (log(1 - exp(pi_c)) - log(1 - exp(pi_r)))
        loss = -pi_c + beta * (-log s(log_odds))        inputs (B,) log-probs averaged over tokens, < 0

    log(1 - exp(x)) is computed in the stable two-branch form (as TRL 1.16's ORPOTrainer does) instead
    of LLaMA-Factory's log1p(-exp(x)); they agree to rounding and differ only as x -> 0.
    Rewards are beta * pi. extras: "sft_loss" = -pi_c and "odds_ratio_loss" = -log s(log_odds), (B,).
    """
    _check_beta(beta)
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    _check_1d(policy_chosen_logps=pi_c, policy_rejected_logps=pi_r)
    log_odds = (pi_c - pi_r) - (_log1mexp(pi_c) - _log1mexp(pi_r))
    sft, odds_ratio = -pi_c, -F.logsigmoid(log_odds)
    extras = {"sft_loss": sft.detach(), "odds_ratio_loss": odds_ratio.detach()}
    return LossOutput(sft + beta * odds_ratio, beta * pi_c.detach(), beta * pi_r.detach(), extras)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
               reference_rejected_logps=None, *, beta: float, simpo_gamma: float) -> LossOutput:
    """SimPO, Meng et al. 2024 eq. 6; reference-free, reference args ignored:

        loss = -log s(beta*(pi_c - pi_r) - simpo_gamma)        inputs (B,) log-probs averaged over tokens

    Computed as -log s(beta * ((pi_c - pi_r) - simpo_gamma/beta)), the same expression and operation order
    as LLaMA-Factory 0.9.5 `simpo_loss` and TRL 1.16's CPOTrainer, so results match them bit for bit.
    Rewards are beta * pi.
    """
    _check_beta(beta)
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    _check_1d(policy_chosen_logps=pi_c, policy_rejected_logps=pi_r)
    losses = -F.logsigmoid(beta * ((pi_c - pi_r) - simpo_gamma / beta))
    return LossOutput(losses, beta * pi_c.detach(), beta * pi_r.detach(), {})


def kto_loss(policy_logps, reference_logps, kto_tags, policy_kl_logps, reference_kl_logps, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             kl_reduce: Callable[[Tensor], Tensor] | None = None) -> LossOutput:
    """Unpaired KTO, Ethayarajh et al. 2024 eq. 7 (lambda_D, lambda_U = desirable/undesirable_weight).

    policy_logps, reference_logps: (N,) summed log-probs; kto_tags: (N,) bool, True = desirable;
    policy_kl_logps, reference_kl_logps: (M,) log-probs of mismatched prompt/completion pairs.

        KL = clamp(kl_reduce(mean(policy_kl_logps - reference_kl_logps)), min=0), detached
        desirable:   w_d * (1 - s(beta*(d - KL)))        d = policy_logps - reference_logps
        undesirable: w_u * (1 - s(beta*(KL - d)))

    `kl_reduce` lets the trainer average the batch KL over workers before the clamp (default: identity).
    Compared with TRL 1.16 `KTOTrainer._compute_loss` (the loss is inlined there, there is no
    `kto_loss` method): same maths, same order (detach, mean across processes, then clamp), but TRL
    returns cat(desirable losses, undesirable losses) while `losses` here stays in input order, one per
    example; the means agree. chosen_rewards = beta*d of desirable rows, rejected_rewards = beta*d of
    undesirable rows (lengths may differ, either may be empty). extras: {"kl": KL, 0-d}.
    """
    _check_beta(beta)
    _check_1d(policy_logps=policy_logps, reference_logps=reference_logps, kto_tags=kto_tags)
    _check_1d(policy_kl_logps=policy_kl_logps, reference_kl_logps=reference_kl_logps)
    if kto_tags.dtype != torch.bool:
        raise ValueError(f"kto_tags must be a bool tensor (True = desirable), got {kto_tags.dtype}")
    kl = (policy_kl_logps - reference_kl_logps).mean().detach()  # TRL computes this pass under no_grad
    kl = (kl_reduce(kl) if kl_reduce is not None else kl).clamp(min=0)
    d = policy_logps - reference_logps  # (N,)
    losses = torch.where(kto_tags, desirable_weight * (1 - torch.sigmoid(beta * (d - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - d))))
    rewards = beta * d.detach()
    return LossOutput(losses, rewards[kto_tags], rewards[~kto_tags], {"kl": kl})


def sft_loss(chosen_avg_logps: Tensor) -> Tensor:
    """The pref_ftx term: -avg pi_c per example, (B,) from (B,) log-probs averaged over chosen tokens."""
    _check_1d(chosen_avg_logps=chosen_avg_logps)
    return -chosen_avg_logps


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("sigmoid", sigmoid_loss, True, False, ("beta", "label_smoothing"), "dpo",
                 "DPO (Rafailov et al. 2023); label_smoothing > 0 gives conservative DPO"),
        LossSpec("hinge", hinge_loss, True, False, ("beta",), "dpo",
                 "hinge loss of SLiC (Zhao et al. 2023) on the DPO log-ratio margin"),
        LossSpec("ipo", ipo_loss, True, True, ("beta",), "dpo",
                 "IPO (Azar et al. 2023) on length-averaged log-probs"),
        LossSpec("kto_pair", kto_pair_loss, True, False, ("beta",), "dpo",
                 "paired KTO (Ethayarajh et al. 2024) on chosen/rejected pairs"),
        LossSpec("orpo", orpo_loss, False, True, ("beta",), "dpo",
                 "ORPO (Hong et al. 2024): SFT + odds-ratio term, no reference model"),
        LossSpec("simpo", simpo_loss, False, True, ("beta", "simpo_gamma"), "dpo",
                 "SimPO (Meng et al. 2024): length-averaged margin with target gamma, no reference model"),
        LossSpec("kto", kto_loss, True, False, ("beta", "desirable_weight", "undesirable_weight"), "kto",
                 "unpaired KTO (Ethayarajh et al. 2024) on examples labelled desirable/undesirable"),
    )
}


def loss_names(stage: str | None = None) -> list[str]:
    """Names in registry order, optionally only those of one stage ("dpo" or "kto")."""
    stages = sorted({spec.stage for spec in LOSSES.values()})
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(stages)}")
    return [name for name, spec in LOSSES.items() if stage is None or spec.stage == stage]


def get_loss(name: str) -> LossSpec:
    """The spec for `name`; an unknown name raises ConfigError (a ValueError) naming the nearest one."""
    if name in LOSSES:
        return LOSSES[name]
    nearest = difflib.get_close_matches(name, LOSSES, n=1, cutoff=0.0)[0]  # cutoff 0: always one
    raise ConfigError(f"unknown loss {name!r}; did you mean {nearest!r}? valid losses: {', '.join(LOSSES)}")
