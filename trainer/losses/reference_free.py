"""Losses that need no reference model (reference args are accepted and ignored): orpo, simpo, cpo, sft.

Each returns a `LossOutput` whose rewards are beta * policy log-probs (what TRL's CPO/ORPO trainers log).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.losses.base import LossOutput, check_1d, check_beta, smoothed_logsigmoid_loss


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -log 2 to avoid cancellation (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _policy(pi_c: Tensor, pi_r: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    check_beta(beta)
    check_1d(policy_chosen_logps=pi_c, policy_rejected_logps=pi_r)
    return beta * pi_c.detach(), beta * pi_r.detach()


def token_mean_nll(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """-sum(pi_c) / sum(len_c): the negative log-likelihood per chosen token over the whole batch, 0-d.

    This is TRL 1.16's "sft" loss type and CPO's NLL term (a cross-entropy averaged over all chosen tokens),
    from (B,) summed log-probs and (B,) token counts.
    """
    check_1d(policy_chosen_logps=chosen_logps, chosen_lengths=chosen_lengths)
    return -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1).to(chosen_logps.dtype)


def orpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
              reference_rejected_logps=None, *, beta: float) -> LossOutput:
    """ORPO, Hong et al. 2024 eqs. 6-7 (beta is the paper's lambda); reference-free, reference args ignored:

        log_odds = (pi_c - pi_r) - (log(1 - exp(pi_c)) - log(1 - exp(pi_r)))
        loss = -pi_c + beta * (-log s(log_odds))        inputs (B,) log-probs averaged over tokens, < 0

    log(1 - exp(x)) is computed in the stable two-branch form (as TRL 1.16's ORPOTrainer does) instead
    of LLaMA-Factory's log1p(-exp(x)); they agree to rounding and differ only as x -> 0.
    Rewards are beta * pi. extras: "sft_loss" = -pi_c and "odds_ratio_loss" = -log s(log_odds), (B,).
    """
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    chosen_rewards, rejected_rewards = _policy(pi_c, pi_r, beta)
    log_odds = (pi_c - pi_r) - (_log1mexp(pi_c) - _log1mexp(pi_r))
    sft, odds_ratio = -pi_c, -F.logsigmoid(log_odds)
    extras = {"sft_loss": sft.detach(), "odds_ratio_loss": odds_ratio.detach()}
    return LossOutput(sft + beta * odds_ratio, chosen_rewards, rejected_rewards, extras)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
               reference_rejected_logps=None, *, beta: float, simpo_gamma: float | None = None,
               gamma_beta_ratio: float | None = None) -> LossOutput:
    """SimPO, Meng et al. 2024 eq. 6; reference-free, reference args ignored:

        loss = -log s(beta*(pi_c - pi_r) - gamma)        inputs (B,) log-probs averaged over tokens

    Give exactly one of simpo_gamma (gamma itself) or gamma_beta_ratio (gamma / beta, the paper's
    parametrisation: a beta sweep then keeps the target margin in log-prob units fixed). Computed as
    -log s(beta * ((pi_c - pi_r) - gamma/beta)), the expression and operation order of LLaMA-Factory 0.9.5
    `simpo_loss` and TRL 1.16's CPOTrainer, so results match them bit for bit. Rewards are beta * pi.
    """
    if (simpo_gamma is None) == (gamma_beta_ratio is None):
        raise ValueError("simpo needs exactly one of simpo_gamma or gamma_beta_ratio")
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    chosen_rewards, rejected_rewards = _policy(pi_c, pi_r, beta)
    ratio = gamma_beta_ratio if gamma_beta_ratio is not None else simpo_gamma / beta
    losses = -F.logsigmoid(beta * ((pi_c - pi_r) - ratio))
    return LossOutput(losses, chosen_rewards, rejected_rewards, {})


def cpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
             reference_rejected_logps=None, *, beta: float, chosen_lengths, label_smoothing: float = 0.0,
             cpo_alpha: float = 1.0) -> LossOutput:
    """CPO, Xu et al. 2024 ("Contrastive Preference Optimization") eq. 3 plus its NLL term, as TRL 1.16's
    experimental CPOTrainer with loss_type "sigmoid"; reference-free, reference args ignored:

        loss = -(1 - eps) log s(beta*(pi_c - pi_r)) - eps log s(-beta*(pi_c - pi_r)) + cpo_alpha * NLL
        NLL = -sum_B(pi_c) / sum_B(len_c)        inputs (B,) summed log-probs; chosen_lengths (B,) counts

    The NLL is one number per batch (a token-level mean), added to every example's term.
    extras: "nll_loss" (0-d broadcast to (B,)). Rewards are beta * pi.
    """
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    chosen_rewards, rejected_rewards = _policy(pi_c, pi_r, beta)
    nll = token_mean_nll(pi_c, chosen_lengths).expand(pi_c.shape[0])
    losses = smoothed_logsigmoid_loss(beta * (pi_c - pi_r), label_smoothing) + cpo_alpha * nll
    return LossOutput(losses, chosen_rewards, rejected_rewards, {"nll_loss": nll.detach()})


def sft_nll_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
                 reference_rejected_logps=None, *, beta: float, chosen_lengths) -> LossOutput:
    """TRL 1.16's "sft" loss type: the NLL of the chosen responses per token over the batch,

        loss = -sum_B(pi_c) / sum_B(len_c)        (B,) copies of one number; inputs (B,) summed log-probs

    Meant as a term of a combined loss (MPO, Wang et al. 2024: sigmoid 0.8 + bco_pair 0.2 + sft 1.0).
    It differs from `pref_ftx`, LLaMA-Factory's mean over examples of each one's average, when lengths
    differ. Reference args are ignored; rewards are beta * pi (beta only scales that metric).
    """
    pi_c, pi_r = policy_chosen_logps, policy_rejected_logps
    chosen_rewards, rejected_rewards = _policy(pi_c, pi_r, beta)
    losses = token_mean_nll(pi_c, chosen_lengths).expand(pi_c.shape[0])
    return LossOutput(losses, chosen_rewards, rejected_rewards, {})


def sft_loss(chosen_avg_logps: Tensor) -> Tensor:
    """The pref_ftx term: -avg pi_c per example, (B,) from (B,) log-probs averaged over chosen tokens."""
    check_1d(chosen_avg_logps=chosen_avg_logps)
    return -chosen_avg_logps
