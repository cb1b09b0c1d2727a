"""Ctrl-C (SIGINT) or SIGTERM on a running sweep: Tune saves the sweep's state and stops its trials, the
MLflow parent run is marked KILLED, the resume command is printed, and the driver exits 128 + the signal
(130, 143), so a shell, a scheduler or `ray job` sees that the sweep did not finish.

Tune stops an experiment gracefully on SIGINT and SIGUSR1 (`ray.tune.tune._setup_signal_catching`), but
then returns from `Tuner.fit()` as if it had finished, and it ignores SIGTERM (the process dies with no
state saved). `SweepInterrupts`, held around `fit()`, takes both signals itself (with Tune's own SIGINT
handler turned off), notes which one came, and hands the stop to Tune's SIGUSR1 handler. A second signal
stops at once (KeyboardInterrupt). A signal before Tune's loop is up (nothing to save yet) raises
`Interrupted` at once.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_TUNE_SIGINT_OFF = "TUNE_DISABLE_SIGINT_HANDLER"


class Interrupted(BaseException):
    """A sweep stopped by `signum` before Tune could save anything: exit 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class SweepInterrupts:
    """`with SweepInterrupts() as interrupts: tuner.fit()`; afterwards `interrupts.signum` is the signal
    that stopped the sweep, or None. Main thread only (Python delivers signals there)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._tune_sigint_env: str | None = None

    def __enter__(self) -> SweepInterrupts:
        self._tune_sigint_env = os.environ.get(_TUNE_SIGINT_OFF)
        os.environ[_TUNE_SIGINT_OFF] = "1"  # Tune must leave SIGINT to us (it reads this in fit())
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._tune_sigint_env is None:
            os.environ.pop(_TUNE_SIGINT_OFF, None)
        else:
            os.environ[_TUNE_SIGINT_OFF] = self._tune_sigint_env

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now, Tune's last save is skipped
        self.signum = signum
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_handler):  # Tune's loop is not running (yet): nothing to save
            raise Interrupted(signum)
        print(f"\nprefsweep: {signal.Signals(signum).name} received: Tune saves the sweep's state and stops "
              f"its trials (signal again to stop at once)", flush=True)
        tune_handler(signal.SIGUSR1, frame)  # sets Tune's "experiment interrupted" event


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def resume_command(source, overrides, *, worker_logs: bool = False) -> str:
    """The command that finishes an interrupted sweep: the same spec and overrides, plus `--resume`."""
    spec = str(source) if isinstance(source, (str, Path)) else "SPEC.yaml"
    args = ["prefsweep", "sweep", spec, *overrides, *(["--worker-logs"] if worker_logs else []), "--resume"]
    return shlex.join(args)
