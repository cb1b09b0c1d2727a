"""Modifiers TRL 1.16's DPOTrainer applies around a loss, as pure functions: LD-DPO's down-weighted
verbose tail, WPO's pair weights, and the weighted sum of a combined loss (MPO).

The reference-moving modifier (TR-DPO, `sync_ref_model`) changes weights, not a formula: it is
`trainer.preference_trainer.ReferenceSyncCallback`. f-divergences live in `base.f_scores`, inside the losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trainer.losses.base import LossOutput


def ld_weighted_logps(per_token: Tensor, response_mask: Tensor, ld_alpha: float) -> Tensor:
    """LD-DPO, Liu et al. 2024 ("Length Desensitization in DPO") eq. 9: each response's log-prob with the
    tokens beyond the shorter response of its pair weighted by alpha,

        logp = sum(first m tokens) + alpha * sum(the rest),   m = min(len_chosen, len_rejected)

    per_token: (2B, S) per-position log-probs, chosen rows then rejected rows (0 off the response);
    response_mask: (2B, S) bool, True where a position's log-prob belongs to the response.
    Returns (2B,). alpha = 1 is the plain sum (DPO), alpha = 0 keeps only the shared length. Same masks and
    order of operations as TRL 1.16 (`DPOTrainer._compute_loss` and `compute_ref_log_probs`), which apply
    it to policy and reference alike; hence ld_alpha is part of the reference cache key.
    """
    if per_token.shape != response_mask.shape or per_token.dim() != 2 or per_token.shape[0] % 2:
        raise ValueError(
            f"per_token {tuple(per_token.shape)} and response_mask {tuple(response_mask.shape)} must both be "
            "(2B, S), chosen rows then rejected rows"
        )
    if not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {ld_alpha}")
    mask = response_mask.long()
    position = mask.cumsum(dim=1)  # 1-based index of each response token within its response
    chosen_lengths, rejected_lengths = mask.sum(dim=1).chunk(2)
    shared = torch.minimum(chosen_lengths, rejected_lengths).repeat(2)[:, None]  # (2B, 1)
    shared_mask = (position > 0) & (position <= shared) & response_mask
    tail_mask = (position > shared) & response_mask
    return (per_token * shared_mask).sum(dim=1) + ld_alpha * (per_token * tail_mask).sum(dim=1)


def wpo_weights(logps: Tensor, log_sum_sq_probs: Tensor, lengths: Tensor) -> Tensor:
    """WPO, Zhou et al. 2024 ("Weighted Preference Optimization") eq. 2, as TRL 1.16 implements it: the
    weight of a pair is w_c * w_r with

        w = exp( (1/len) * sum_t [log p(y_t) - log sum_v p(v)^2] )

    the policy's length-normalised sequence probability, aligned by each position's sum of squared
    probabilities (a weight of 1 means the response is as likely as a draw from the policy itself).
    logps: (2B,) summed response log-probs (not LD-weighted), log_sum_sq_probs: (2B,) the summed
    log sum_v p(v)^2 over the same positions, lengths: (2B,) counts; chosen rows then rejected rows.
    Returns (B,) detached weights (TRL computes them under no_grad).
    """
    with torch.no_grad():
        mean = (logps - log_sum_sq_probs) / lengths.to(logps.dtype).clamp(min=1)
        chosen, rejected = torch.exp(mean).chunk(2)
        return chosen * rejected


def combined_loss(outputs: Sequence[LossOutput], weights: Sequence[float],
                  pair_weights: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """Weighted sum of the batch means of several losses (TRL's `loss_type` list with `loss_weights`; MPO,
    Wang et al. 2024, uses sigmoid 0.8 + bco_pair 0.2 + sft 1.0):

        loss = sum_k weight_k * mean_B(pair_weights * losses_k)

    pair_weights: (B,) WPO weights or None. Returns the 0-d total and each component's weighted-by-pair but
    not by weight_k batch mean (detached), for per-component metrics.
    """
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} losses but {len(weights)} weights")
    total, parts = 0.0, []
    for out, weight in zip(outputs, weights):
        losses = out.losses if pair_weights is None else out.losses * pair_weights
        mean = losses.mean()
        parts.append(mean.detach())
        total = total + mean * weight
    return total, parts
