"""The small offline training loop the tiny demo models share (SFT warm-up, Bradley-Terry reward model).

Batches cycle through a seeded permutation of the items, reshuffled each pass, with a generator of their
own (the global RNG is left alone), so a model built with the same seed is the same model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def run_seeded_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, *, steps: int, n_items: int,
                     batch_size: int, seed: int, loss_of: Callable[[list[int]], Tensor]) -> list[float]:
    """`steps` optimizer steps of `loss_of(indices of one batch)`; the model is left in eval mode. Returns
    the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n_items, generator=generator).tolist()
        index, order = order[:batch_size], order[batch_size:]
        loss = loss_of(index)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
