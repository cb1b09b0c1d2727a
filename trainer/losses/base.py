"""What every loss shares: the output type, argument checks, rewards and TRL's f-divergence scores.

Notation (docs/architecture.md, "Losses: notation"): pi_c, pi_r are policy log-probs of the chosen / rejected response,
ref_c, ref_r the reference's; dc = pi_c - ref_c, dr = pi_r - ref_r, h = dc - dr; s = sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
"""f-DPO (Wang et al. 2023, "Beyond Reverse KL") regularisers, as TRL 1.16's `f_divergence_type` names them."""


@dataclass(frozen=True)
class LossOutput:
    """Per-example results of one loss call; the caller takes the mean."""

    losses: Tensor  # (B,); kto_pair: (2B,) = cat(chosen terms, rejected terms); kto: (N,) in input order
    chosen_rewards: Tensor  # (B,) detached; kto: desirable rows only
    rejected_rewards: Tensor  # (B,) detached; kto: undesirable rows only
    extras: dict[str, Tensor]  # detached metrics; orpo: (B,) terms; kto: {"kl": 0-d}; else {}


def check_1d(**tensors: Tensor | None) -> None:
    """Raise ValueError naming the first argument that is missing, not 1-D, or shaped unlike the first."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t is None:
            raise ValueError(f"{name} is required for this loss but is None")
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def ratios(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, beta: float):
    """Checked (dc, dr), each (B,)."""
    check_beta(beta)
    check_1d(policy_chosen_logps=pi_c, policy_rejected_logps=pi_r,
             reference_chosen_logps=ref_c, reference_rejected_logps=ref_r)
    return pi_c - ref_c, pi_r - ref_r


def rewards(dc: Tensor, dr: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """beta * dc, beta * dr, detached: the implicit rewards every reference-based loss reports (TRL too)."""
    return beta * dc.detach(), beta * dr.detach()


def f_scores(logratio: Tensor, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5) -> Tensor:
    """f'(u) of f-DPO (Wang et al. 2023, Table 1) at u = pi/ref, from logratio = log u, (B,) -> (B,).

        reverse_kl        log u                           (standard DPO)
        forward_kl        1 - 1/u = 1 - exp(-log u)
        js_divergence     log(2u / (1 + u)) = log 2 + log s(log u)
        alpha_divergence  (u^(a-1) - 1) / (a - 1), a = f_alpha_divergence_coef; a = 1 is the log u limit

    As TRL 1.16's `DPOTrainer._compute_loss`: alpha_divergence exponentiates in float32 (at least), clamping
    the exponent at 11 for float16 and 80 otherwise so exp stays representable when cast back.
    """
    if f_divergence_type == "reverse_kl":
        return logratio
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratio)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    if f_divergence_type == "alpha_divergence":
        a = f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:
            return logratio
        t = (a - 1.0) * logratio
        wide = t.to(torch.promote_types(t.dtype, torch.float32))
        clamped = torch.clamp(wide, max=11.0 if t.dtype == torch.float16 else 80.0)
        return (torch.exp(clamped) - 1.0).to(t.dtype) * (1.0 / (a - 1.0))
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; valid: {', '.join(F_DIVERGENCES)}")


def delta_score(dc: Tensor, dr: Tensor, f_divergence_type: str, f_alpha_divergence_coef: float) -> Tensor:
    """f'(pi_c/ref_c) - f'(pi_r/ref_r): h itself under reverse_kl."""
    return f_scores(dc, f_divergence_type, f_alpha_divergence_coef) - f_scores(dr, f_divergence_type,
                                                                              f_alpha_divergence_coef)


def per_token(score: Tensor, lengths: Tensor | None, name: str) -> Tensor:
    """score / completion length (lengths clamped to >= 1, as TRL), (B,) -> (B,)."""
    check_1d(score=score, **{name: lengths})
    return score / lengths.to(score.dtype).clamp(min=1.0)


def smoothed_logsigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - eps) log s(x) - eps log s(-x): DPO's sigmoid loss with conservative label smoothing eps."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
