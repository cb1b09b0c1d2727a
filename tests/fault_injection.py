"""A fault tests install in Ray Train workers (`TrainLoop.callbacks`): kill one worker at one step, once; and
`kill_driver_when`, which SIGKILLs a sweep driver at a chosen point."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
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


def kill_driver_when(command: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                     ready: Callable[[], bool], timeout_s: float) -> None:
    """Start a sweep driver in a process group of its own, poll `ready()` twice a second, then SIGKILL the
    whole group (the driver and the local Ray it started die together). Fails if the driver exits first
    or `ready()` is not true within `timeout_s`."""
    with open(log_path, "w") as log:
        driver = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while not ready():
                assert driver.poll() is None, f"driver exited early:\n{log_path.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no halfway point:\n{log_path.read_text()[-4000:]}"
                time.sleep(0.5)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
