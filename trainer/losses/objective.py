"""One paired training objective from one forward: the loss's components (one, or several combined), with
LD-DPO, WPO and the components' weights applied, as TRL 1.16's `DPOTrainer._compute_loss` composes them.

The trainer calls `paired_objective` with the policy's and reference's `SequenceLogps`; tests call it with
hand-built ones and compare with TRL on the same per-token numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from trainer.logps import SequenceLogps
from trainer.losses.base import LossOutput
from trainer.losses.modifiers import combined_loss, ld_weighted_logps, wpo_weights
from trainer.losses.registry import LossSpec


@dataclass(frozen=True)
class Objective:
    loss: Tensor  # 0-d, differentiable
    outputs: list[LossOutput]  # one per component
    parts: list[Tensor]  # each component's (pair-weighted) batch mean, detached, before its weight
    rewards: LossOutput  # the component whose rewards are reported (the first reference-based one)
    logps: Tensor  # (2B,) detached log-probs the losses read (LD-weighted or averaged), for metrics
    pair_weights: Tensor | None  # (B,) WPO weights


def paired_objective(spec: LossSpec, loss_kwargs: dict, weights: Sequence[float] | None, policy: SequenceLogps,
                     reference: SequenceLogps | None, *, response_mask: Tensor | None = None,
                     ld_alpha: float | None = None, reference_weighted: bool = False,
                     use_weighting: bool = False) -> Objective:
    """policy, reference: log-probs of 2B rows (chosen block, then rejected block); reference None for a
    reference-free loss. ld_alpha needs `per_token` in policy (and reference, unless reference_weighted: its
    sums already carry the weighting, as the reference cache stores them) and the (2B, S) response_mask.
    use_weighting needs policy.log_sum_sq. loss_kwargs: every hyperparameter the components take."""
    components = spec.components or (spec,)
    weights = list(weights) if weights is not None else [1.0] * len(components)
    weighted = policy.sum if ld_alpha is None else ld_weighted_logps(policy.per_token, response_mask, ld_alpha)
    ref_weighted = None if reference is None else reference.sum
    if reference is not None and ld_alpha is not None and not reference_weighted:
        ref_weighted = ld_weighted_logps(reference.per_token, response_mask, ld_alpha)
    lengths = dict(zip(("chosen_lengths", "rejected_lengths"), policy.count.chunk(2)))
    outputs = []
    for part in components:
        if part.averages_logps:
            values, ref_values = policy.mean, None if reference is None else reference.mean
        else:
            values, ref_values = (policy.sum if part.unweighted_logps else weighted), ref_weighted
        chosen, rejected = values.chunk(2)
        ref_chosen, ref_rejected = ref_values.chunk(2) if ref_values is not None else (None, None)
        kwargs = {name: loss_kwargs[name] for name in part.hparams}
        outputs.append(part.fn(chosen, rejected, ref_chosen, ref_rejected, **kwargs,
                               **{name: lengths[name] for name in part.inputs}))
    pair_weights = wpo_weights(policy.sum, policy.log_sum_sq, policy.count) if use_weighting else None
    loss, parts = combined_loss(outputs, weights, pair_weights)
    first = next((o for o, p in zip(outputs, components) if p.needs_reference), outputs[0])
    logps = (policy.mean if spec.averages_logps else weighted).detach()
    return Objective(loss, outputs, parts, first, logps, pair_weights)
