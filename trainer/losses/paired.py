"""Paired losses on the chosen-minus-rejected score: the ones an f-divergence (f-DPO) generalises.

Each takes (B,) summed log-probs (pi_c, pi_r, ref_c, ref_r) and keyword-only hyperparameters, and returns a
`LossOutput` of (B,) losses with rewards beta*dc, beta*dr. The score of a response is f'(pi/ref) for the
chosen `f_divergence_type` (`base.f_scores`; log pi/ref by default), and delta = score_c - score_r (h under
reverse_kl). Every formula here is TRL 1.16's `DPOTrainer._compute_loss` branch of the same name, computed
in the same order; the TRL parity tests in tests/test_losses_trl.py check each one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.base import (
    LossOutput,
    delta_score,
    f_scores,
    per_token,
    ratios,
    rewards,
    smoothed_logsigmoid_loss,
)


def sigmoid_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 *, beta: float, label_smoothing: float = 0.0, f_divergence_type: str = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """DPO, Rafailov et al. 2023 eq. 7, with conservative DPO (cDPO) label smoothing eps in [0, 0.5):

        loss = -(1 - eps) * log s(beta*delta) - eps * log s(-beta*delta)

    eps is the assumed probability that a preference label is flipped (Mitchell 2023, "A note on DPO
    with noisy preferences"). TRL 1.16's "sigmoid" ignores label_smoothing (only "robust", "exo_pair" and
    "aot" read it), so eps = 0 is TRL's sigmoid; eps > 0 is the smoothed "sigmoid" of TRL 0.24's dpo_loss,
    which LLaMA-Factory 0.9.5 calls.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    logits = beta * delta_score(dc, dr, f_divergence_type, f_alpha_divergence_coef)
    return LossOutput(smoothed_logsigmoid_loss(logits, label_smoothing), *rewards(dc, dr, beta), {})


def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
               *, beta: float, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
               ) -> LossOutput:
    """Hinge loss of SLiC-HF (Zhao et al. 2023), max(0, delta - log P(y+|x) + log P(y-|x)), applied to the
    reference-normalised margin with delta = 1/beta and scaled by beta, as TRL defines "hinge":

        loss = relu(1 - beta*delta)
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    delta = delta_score(dc, dr, f_divergence_type, f_alpha_divergence_coef)
    return LossOutput(torch.relu(1 - beta * delta), *rewards(dc, dr, beta), {})


def _length_normalised_delta(dc, dr, chosen_lengths, rejected_lengths, f_divergence_type, f_alpha_divergence_coef):
    """score_c / len_c - score_r / len_r: TRL 1.16's per-token delta of ipo and sigmoid_norm."""
    chosen = per_token(f_scores(dc, f_divergence_type, f_alpha_divergence_coef), chosen_lengths, "chosen_lengths")
    rejected = per_token(f_scores(dr, f_divergence_type, f_alpha_divergence_coef), rejected_lengths,
                         "rejected_lengths")
    return chosen - rejected


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             *, beta: float, chosen_lengths, rejected_lengths, f_divergence_type: str = "reverse_kl",
             f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """IPO, Azar et al. 2023 eq. 17, where beta is the regularisation strength the paper calls tau:

        loss = (score_c/len_c - score_r/len_r - 1/(2*beta))**2        inputs (B,) summed log-probs

    chosen_lengths, rejected_lengths: (B,) response token counts. Summed log-probs make the squared target
    scale with length, so TRL 1.16 divides each summed log-ratio score by its completion length (the IPO
    authors confirmed the paper's results use this). Under reverse_kl that is
    (avg pi_c - avg ref_c) - (avg pi_r - avg ref_r): the averaged log-probs LLaMA-Factory and earlier
    prefsweep fed this loss give the same value. Rewards are beta * summed log-ratios, as TRL logs them.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    delta = _length_normalised_delta(dc, dr, chosen_lengths, rejected_lengths, f_divergence_type,
                                     f_alpha_divergence_coef)
    return LossOutput((delta - 1 / (2 * beta)) ** 2, *rewards(dc, dr, beta), {})


def sigmoid_norm_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps, *, beta: float, chosen_lengths, rejected_lengths,
                      f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """Length-normalised DPO (the "LN-DPO" baseline of Meng et al. 2024, SimPO, sec. 3):

        loss = -log s(beta * (score_c/len_c - score_r/len_r))        inputs (B,) summed log-probs

    chosen_lengths, rejected_lengths: (B,) response token counts. As TRL 1.16, the summed log-ratio scores
    are divided by the completion lengths; under reverse_kl this is DPO on per-token averaged policy and
    reference log-probs. Rewards are beta * summed log-ratios.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    delta = _length_normalised_delta(dc, dr, chosen_lengths, rejected_lengths, f_divergence_type,
                                     f_alpha_divergence_coef)
    return LossOutput(-F.logsigmoid(beta * delta), *rewards(dc, dr, beta), {})


def exo_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float, label_smoothing: float = 1e-3, f_divergence_type: str = "reverse_kl",
                  f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """EXO-pref, Ji et al. 2024 ("Towards Efficient Exact Optimization of LM Alignment") eq. 16, K = 2:
    KL(p_f || p_rh) between the policy's softmax over {chosen, rejected} with logits beta*score and the
    smoothed label distribution (1 - eps, eps):

        q_w = s(beta*delta), q_l = s(-beta*delta)
        loss = q_w * (log q_w - log(1 - eps)) + q_l * (log q_l - log eps)

    eps = label_smoothing must be > 0 (log eps); the paper recommends 1e-3, the default here (and the value
    config validation fills in for exo_pair; TRL 1.16 raises on eps = 0 instead). At delta = 0 the loss is
    -log 2 - (log(1 - eps) + log eps) / 2.
    """
    if not 0 < label_smoothing < 1:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1), got {label_smoothing}")
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    logits = beta * delta_score(dc, dr, f_divergence_type, f_alpha_divergence_coef)
    eps = torch.tensor(label_smoothing, dtype=logits.dtype, device=logits.device)
    losses = (torch.sigmoid(logits) * (F.logsigmoid(logits) - torch.log1p(-eps))
              + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - torch.log(eps)))
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def robust_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                *, beta: float, label_smoothing: float = 0.0, f_divergence_type: str = "reverse_kl",
                f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """Robust DPO, Chowdhury et al. 2024 eq. 8: an unbiased loss under labels flipped with probability eps:

        loss = (-(1 - eps) * log s(beta*delta) + eps * log s(-beta*delta)) / (1 - 2*eps),  eps in [0, 0.5)

    eps = 0 is DPO; at delta = 0 the loss is log 2 for every eps.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust needs label_smoothing in [0, 0.5), got {label_smoothing}")
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    logits = beta * delta_score(dc, dr, f_divergence_type, f_alpha_divergence_coef)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    return LossOutput((clean - flipped) / (1 - 2 * label_smoothing), *rewards(dc, dr, beta), {})


def discopop_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float, discopop_tau: float = 0.05, f_divergence_type: str = "reverse_kl",
                  f_alpha_divergence_coef: float = 0.5) -> LossOutput:
    """DiscoPOP's log-ratio modulated loss, Chris Lu et al. 2024 ("Discovering Preference Optimization
    Algorithms with and for LLMs") eq. 5, tau = discopop_tau (the paper's 0.05 by default):

        x = beta*delta, m = s(x / tau)
        loss = (1 - m) * (-log s(x)) + m * exp(-x)

    a blend of the logistic (DPO) and exponential losses; at delta = 0, m = 1/2 and the loss is (log 2 + 1)/2.
    """
    if not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    logits = beta * delta_score(dc, dr, f_divergence_type, f_alpha_divergence_coef)
    modulation = torch.sigmoid(logits / discopop_tau)
    losses = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    return LossOutput(losses, *rewards(dc, dr, beta), {})
