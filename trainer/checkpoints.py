"""Training checkpoints: the completion marker, finding the last complete one, resuming, loading DeepSpeed's safely.

A checkpoint directory counts only once rank 0 wrote its `.complete` marker (after every rank wrote its files);
`resume_from_checkpoint: true` resumes from the last such directory (see `trainer.config.resume`), never from
one cut off mid-write.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.atomic_write import write_atomic

CHECKPOINT_COMPLETE = ".complete"
"""Written last into `checkpoint-N/` (atomically, by rank 0, after every rank wrote its files): a
checkpoint without it was cut off mid-write and is never resumed from."""
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

def checkpoint_is_complete(path: str | os.PathLike) -> bool:
    return Path(path, CHECKPOINT_COMPLETE).is_file()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step `checkpoint-N` under `output_dir` that carries the completion marker, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = [
        (int(m.group(1)), child)
        for child in root.iterdir()
        if (m := _CHECKPOINT_RE.match(child.name)) and child.is_dir() and checkpoint_is_complete(child)
    ]
    return str(max(steps)[1]) if steps else None


def deepspeed_safe_globals() -> list:
    """What DeepSpeed's ZeRO optimizer state files pickle beside tensors: allow-listed for
    `torch.load(weights_only=True)` (the loss scaler, the ZeRO stage enum, fp32 fragment addresses)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_deepspeed_checkpoints_weights_only() -> None:
    """Make DeepSpeed's checkpoint engine load with `weights_only=True` (it turns `weights_only` off
    itself): its own classes are allow-listed, anything else in a checkpoint is refused, not unpickled."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if getattr(TorchCheckpointEngine.load, "_prefsweep_weights_only", False):
        return
    torch.serialization.add_safe_globals(deepspeed_safe_globals())

    def load(self, path: str, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=True)

    load._prefsweep_weights_only = True
    TorchCheckpointEngine.load = load


def mark_checkpoint_complete(path: str | os.PathLike, step: int) -> None:
    """Write the marker atomically: it exists whole or not at all."""
    write_atomic(Path(path, CHECKPOINT_COMPLETE), f"{step}\n")
