"""A fault tests install in Ray Train workers (`TrainLoop.callbacks`): kill one worker at one step, once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from transformers import TrainerCallback


class FaultInjectionCallback(TrainerCallback):
    """Records each finished step and SIGKILLs this worker once; installed per worker as
    `functools.partial(FaultInjectionCallback, kill_step=..., kill_rank=..., marker=..., events=...)`.

    `kill_step`, `kill_rank`: the worker of that world rank kills its own process at the end of that
    step, on the first attempt only (`marker`, a file, is created just before: a restarted worker
    group finds it and runs on). `events`: a file rank 0 appends each finished step to, across attempts.
    """

    def __init__(self, rank: int, kill_step: int, kill_rank: int, marker: str, events: str):
        self.rank, self.kill_step, self.kill_rank = rank, kill_step, kill_rank
        self.marker, self.events = Path(marker), Path(events)

    def on_step_end(self, args, state, control, **kwargs):
        if self.rank == 0:
            with self.events.open("a") as handle:
                handle.write(f"{state.global_step}\n")
        if self.rank == self.kill_rank and state.global_step == self.kill_step and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
