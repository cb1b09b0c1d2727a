"""Start-up phase marks for the benchmarks (`benchmarks.startup`, `benchmarks.sweep_vs_lf`): with
`PREFSWEEP_PHASES=FILE` set, each `mark(name)` appends `name unix_time pid` to FILE, from any process of a
run (the CLI, a sweep's driver, Ray workers, which inherit the variable from a local Ray's driver).
Unset, `mark` does nothing but read the environment."""

from __future__ import annotations

import os
import time

ENV = "PREFSWEEP_PHASES"


def mark(name: str) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{name} {time.time():.3f} {os.getpid()}\n")


def phase_callbacks() -> list:
    """A callback marking the first step's start and the end of training, when marks are on; else none."""
    if not os.environ.get(ENV):
        return []
    from transformers import TrainerCallback

    class PhaseMarks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark(f"parallel_mode={args.parallel_mode.name}")  # DISTRIBUTED: the Trainer wrapped the model in DDP

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                mark("first_step_begin")

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                mark("first_step_end")

        def on_train_end(self, args, state, control, **kwargs):
            mark("train_end")

    return [PhaseMarks()]
