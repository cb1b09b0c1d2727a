"""TR-DPO's moving reference: the reference model drifts toward the policy during training."""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback


class ReferenceSyncCallback(TrainerCallback):
    """TR-DPO (Gorbatovski et al. 2024), as TRL 1.16's SyncRefModelCallback: after every `sync_steps`-th
    optimizer step, reference <- alpha * policy + (1 - alpha) * reference, parameter by parameter.

    The reference must be a separate copy of the policy's architecture (full or freeze tuning); the config
    refuses LoRA and the reference log-prob cache with sync_ref_model.
    """

    def __init__(self, trainer, alpha: float, sync_steps: int):
        self.trainer, self.alpha, self.sync_steps = trainer, alpha, sync_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.sync_steps == 0:
            policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
            mix_reference_(self.trainer.reference.model, policy, self.alpha)


@torch.no_grad()
def mix_reference_(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """reference <- alpha * policy + (1 - alpha) * reference, in place; the two must have the same parameters."""
    ref_params, policy_params = list(reference.parameters()), list(policy.parameters())
    shapes = [p.shape for p in ref_params], [p.shape for p in policy_params]
    if shapes[0] != shapes[1]:
        raise ValueError("sync_ref_model needs a reference with the policy's parameters (same architecture)")
    for target, source in zip(ref_params, policy_params):
        target.mul_(1.0 - alpha).add_(source.to(target.dtype), alpha=alpha)
