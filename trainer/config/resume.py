"""Which checkpoint a run resumes from, resolved from the config's `resume_from_checkpoint`."""

from __future__ import annotations

from pathlib import Path

from trainer.checkpoints import CHECKPOINT_COMPLETE, checkpoint_is_complete, last_complete_checkpoint
from trainer.config.schema import TrainConfig
from trainer.errors import ConfigError


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint` true -> the last COMPLETE checkpoint in
    output_dir (one with the `.complete` marker; a checkpoint cut off mid-write is skipped); a path must
    itself be complete."""
    resume = cfg.training.get("resume_from_checkpoint")
    if resume in (None, False, "false", "False"):
        return None
    if resume in (True, "true", "True"):
        last = last_complete_checkpoint(cfg.output_dir)
        if last is None:
            raise ConfigError(f"resume_from_checkpoint is true but {cfg.output_dir} holds no complete checkpoint")
        return last
    if not Path(resume).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {resume} is not a checkpoint directory")
    if not checkpoint_is_complete(resume):
        raise ConfigError(
            f"resume_from_checkpoint: {resume} is incomplete (no {CHECKPOINT_COMPLETE} marker: "
            f"the run was cut off while writing it)"
        )
    return str(resume)
