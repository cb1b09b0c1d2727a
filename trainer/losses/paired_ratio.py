"""Paired losses on the chosen and rejected log-ratios separately (or on sorted batches): no f-divergence.

Each takes (B,) summed log-probs (pi_c, pi_r, ref_c, ref_r) and keyword-only hyperparameters, and returns a
`LossOutput` with rewards beta*dc, beta*dr. These terms do not reduce to the chosen-minus-rejected reward
difference, where f-DPO's beta*log Z(x) cancels, so TRL 1.16 (and config validation here) refuses a
non-default f_divergence_type for them. Formulas follow TRL 1.16's `DPOTrainer._compute_loss` branch of the
same name, except kto_pair, which TRL dropped (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.base import LossOutput, ratios, rewards, smoothed_logsigmoid_loss


def nca_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """NCA, Chen et al. 2024 ("Noise Contrastive Alignment of LMs with Explicit Rewards") eq. 12, K = 2:

        loss = -log s(beta*dc) - 1/2 log s(-beta*dc) - 1/2 log s(-beta*dr)

    Optimises absolute likelihoods: at dc = dr = 0 the loss is 2 log 2.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    chosen, rejected = beta * dc, beta * dr
    losses = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def bco_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """Paired BCO, Jung et al. 2024 ("Binary Classifier Optimization for LLM Alignment") eq. 7 with the
    reward shift delta = 0: chosen rewards classified as positive, rejected as negative,

        loss = -log s(beta*dc) - log s(-beta*dr)

    TRL 1.16 keeps no running mean of the rewards for this shift any more (earlier TRL did); neither does
    this function, so it has no state. At dc = dr = 0 the loss is 2 log 2.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    losses = -F.logsigmoid(beta * dc) - F.logsigmoid(-(beta * dr))
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def sppo_hard_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                   *, beta: float) -> LossOutput:
    """SPPO, Wu et al. 2024 ("Self-Play Preference Optimization") eq. 4.7 with hard win probabilities
    (P = 1 for the chosen, 0 for the rejected response) instead of PairRM's soft ones:

        loss = (dc - 1/(2*beta))**2 + (dr + 1/(2*beta))**2

    At dc = dr = 0 the loss is 1/(2*beta**2).
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    losses = (dc - 0.5 / beta) ** 2 + (dr + 0.5 / beta) ** 2
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def apo_zero_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """APO-zero, D'Oosterlinck et al. 2024 ("Anchored Preference Optimization") eq. 7: raise the chosen
    likelihood and lower the rejected one (for chosen outputs better than the model's own):

        loss = (1 - s(beta*dc)) + s(beta*dr)        1 at dc = dr = 0
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    losses = (1 - torch.sigmoid(beta * dc)) + torch.sigmoid(beta * dr)
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def apo_down_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """APO-down, D'Oosterlinck et al. 2024 eq. 8: lower both likelihoods, the rejected one more (for chosen
    outputs worse than the model's own):

        loss = s(beta*dc) + (1 - s(beta*(dc - dr)))        1 at dc = dr = 0
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    losses = torch.sigmoid(beta * dc) + (1 - torch.sigmoid(beta * (dc - dr)))
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def aot_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             *, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (paired), Melnyk et al. 2024 ("Distributional Preference Alignment of LLMs via Optimal
    Transport"): first-order stochastic dominance of the policy's chosen-over-rejected log-likelihood ratios
    over the reference's, by sorting both over the batch:

        x = beta * (sort_B(pi_c - pi_r) - sort_B(ref_c - ref_r))
        loss = -(1 - eps) log s(x) - eps log s(-x)        (B,), ordered by rank, not by example

    Losses are per rank, so a per-example weight (WPO) cannot apply. Rewards stay beta*dc, beta*dr per
    example. At pi = ref the loss is log 2.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    reference_sorted, _ = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0)
    losses = smoothed_logsigmoid_loss(beta * (policy_sorted - reference_sorted), label_smoothing)
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def aot_unpaired_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps, *, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (unpaired), Melnyk et al. 2024: dominance of the chosen log-ratio distribution over the rejected
    one, matched by rank after sorting each over the batch:

        x = beta * (sort_B(dc) - sort_B(dr))
        loss = -(1 - eps) log s(x) - eps log s(-x)        (B,), ordered by rank

    At pi = ref the loss is log 2.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    chosen_sorted, _ = torch.sort(dc, dim=0)
    rejected_sorted, _ = torch.sort(dr, dim=0)
    losses = smoothed_logsigmoid_loss(beta * (chosen_sorted - rejected_sorted), label_smoothing)
    return LossOutput(losses, *rewards(dc, dr, beta), {})


def kto_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta: float) -> LossOutput:
    """Paired KTO, Ethayarajh et al. 2024 eq. 7 (HALOs), as TRL's DPOTrainer computed it until it was removed:

        KL_c = clamp(mean(dc), min=0), KL_r = clamp(mean(dr), min=0)
        losses = cat(1 - s(beta*(dc - KL_r)), 1 - s(beta*(KL_c - dr)))        (2B,) from (B,) inputs

    The reference point for chosen examples is estimated from the rejected half and vice versa.
    Like TRL 0.7-0.8 (and ContextualAI's HALOs code), the batch KL terms are NOT detached, so the gradient
    also flows through the batch means; the unpaired `kto_loss` detaches its KL as TRL's KTOTrainer does.
    """
    dc, dr = ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta)
    kl_c, kl_r = dc.mean().clamp(min=0), dr.mean().clamp(min=0)
    losses = torch.cat((1 - torch.sigmoid(beta * (dc - kl_r)), 1 - torch.sigmoid(beta * (kl_c - dr))))
    return LossOutput(losses, *rewards(dc, dr, beta), {})
