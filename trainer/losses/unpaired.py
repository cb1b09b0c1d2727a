"""Unpaired KTO (stage `kto`): examples labelled desirable or undesirable, with a batch KL reference point."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trainer.losses.base import LossOutput, check_1d, check_beta


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
    check_beta(beta)
    check_1d(policy_logps=policy_logps, reference_logps=reference_logps, kto_tags=kto_tags)
    check_1d(policy_kl_logps=policy_kl_logps, reference_kl_logps=reference_kl_logps)
    if kto_tags.dtype != torch.bool:
        raise ValueError(f"kto_tags must be a bool tensor (True = desirable), got {kto_tags.dtype}")
    kl = (policy_kl_logps - reference_kl_logps).mean().detach()  # TRL computes this pass under no_grad
    kl = (kl_reduce(kl) if kl_reduce is not None else kl).clamp(min=0)
    d = policy_logps - reference_logps  # (N,)
    losses = torch.where(kto_tags, desirable_weight * (1 - torch.sigmoid(beta * (d - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - d))))
    rewards = beta * d.detach()
    return LossOutput(losses, rewards[kto_tags], rewards[~kto_tags], {"kl": kl})
