"""`prefsweep train` on its own private Ray: once the training starts, every other process of that Ray yields
the CPU to it (Linux: nice 19).

A Ray run trains in a worker process while Ray's daemons, the synchronization actor and the driver (Ray Train's
controller polls the worker four times a second) wake up around it: ~1 CPU-second per 30 s of training on this
project's 2-core machines, each wake-up preempting one torch thread and stalling the other at its next barrier.
The in-process run (`use_ray: false`) has none of it. Measured (issue 19, 23 steps, 3 rounds alternated with the
in-process run): `train_runtime` Ray / in-process 1.107x with every process at nice 0, 1.003x with all but the
training worker reniced to 19 from outside, 1.043x with this module (BENCHMARKS.md, ray_overhead, session 11). At
nice 19 they still run, in the gaps and at the end of the worker's time slices.

What stays at its priority:
- the training workers, all their threads: their main thread answers the controller's polls and takes the GIL
  the training thread needs; a preempted low-priority holder would stall the training (priority inversion);
- the raylet: it forks the worker processes, which inherit its niceness (Ray's `worker_niceness` is relative), so
  a worker Ray Train restarts after a failure would train at nice 19.

Niceness on Linux belongs to each thread (`/proc/PID/task`), and a new thread inherits its creator's. A priority
is only ever lowered: a process a user started at nice 5 goes to 19, one already at 19 stays there, none is
brought back to 0. Elsewhere (no `/proc`) nothing changes.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("prefsweep")

BACKGROUND_NICE = 19


def lower(pid: int, nice: int = BACKGROUND_NICE) -> int:
    """Every thread of process `pid` at niceness `nice` (or left where it is higher); how many threads changed."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone, or no /proc
        return 0
    changed = 0
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) < nice:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                changed += 1
        except OSError:  # the thread ended meanwhile
            pass
    return changed


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def background_processes(training: set[int]) -> list[int]:
    """PIDs of the local Ray this process started, but the raylet and the `training` workers: the GCS, the log
    monitor and the raylet's other children (its agents, the synchronization actor, idle workers); none when
    this process started no Ray."""
    from rayjobs.local_ray import local_processes

    pids = [process.pid for kind in ("gcs_server", "log_monitor") for process in local_processes(kind)]
    for raylet in local_processes("raylet"):
        pids += _children(raylet.pid)
    return [pid for pid in pids if pid not in training]


def yield_to_training(worker_group) -> dict[str, int]:
    """Lower everything of this private Ray but the training workers and the raylet, this process (the driver,
    which runs the controller) included. Returns the number of threads changed per kind, for the log."""
    training = {worker.metadata.pid for worker in worker_group.get_workers()}
    changed = {"ray": sum(lower(pid) for pid in background_processes(training)),
               "driver": lower(os.getpid()) if os.getpid() not in training else 0}
    logger.debug("prefsweep: threads lowered to nice %d: %s", BACKGROUND_NICE, changed)
    return changed
