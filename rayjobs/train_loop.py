"""What the driver hands each Ray Train worker: the parsed config and how to run it (`TrainLoop`).

Light on purpose (no transformers, no Ray): the driver builds it, Ray pickles it to the workers, and
`rayjobs.worker.run_worker` runs it.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from trainer.config import TrainConfig


@dataclass
class TrainLoop:
    """What each Ray Train worker is handed (`train_loop_config={"loop": TrainLoop}`): the parsed config
    and how to run it. Pickled to the workers as it is; they never re-read or re-parse the YAML."""

    config: TrainConfig
    """The run's validated config, local paths absolute (see `prepare_config`)."""
    invocation: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    """Id of this `fit()`: workers resume only from checkpoints it wrote (see `rayjobs.worker`)."""
    progress: bool = False
    """Rank 0 draws a Ray progress bar."""
    name: str | None = None
    """The progress bar's label (default: the output dir's name)."""
    metric: str | None = None
    """A sweep's metric, reported first at every step (see `rayjobs.worker.RayReportCallback`)."""
    tracking: dict | None = None
    """Keyword arguments of `rayjobs.tracking.MlflowLoggingCallback` but `config`, or None: no MLflow."""
    callbacks: list = dataclasses.field(default_factory=list)
    """Factories `f(world_rank) -> TrainerCallback | None` each worker adds (picklable; tests install
    fault injection this way)."""
