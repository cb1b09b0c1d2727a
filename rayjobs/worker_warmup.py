"""The training stack imported on a thread as soon as a Ray Train worker process starts (`prefsweep train` on
its own Ray).

A worker process spends ~1.2 s in Ray Train's set-up (actor, train context, process group) before the training
function runs, mostly waiting on the driver, and the training function then spends ~2.5 s importing
transformers, datasets and `trainer`. `start` is the worker's process set-up hook (Ray runs it before the actor
exists: `HOOK_ENV` in the workers' env vars); it imports torch on the worker's main thread, then the rest on a
thread of its own, so that the imports overlap the set-up. The training function calls `wait` before it imports
anything, so no module is ever imported by two threads at once (transformers' lazy modules are not safe for
that). torch comes first, on the main thread, because Ray Train's set-up imports `torch.distributed` there:
importing torch on both threads at once could interleave its package and submodule imports.

Only for a private local Ray (`rayjobs.local_ray` puts the checkout on every worker's PYTHONPATH): Ray ends a
worker whose hook cannot be imported, and on someone else's cluster this module's import path is not ours to
assume. A failed import on the thread is left for the training function to raise again, where the run reports it.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading

# Ray's own variable behind `ray.init(runtime_env={"worker_process_setup_hook": ...})` (which is job-wide:
# every worker of the job, the synchronization actor included); set in one actor's env vars it applies to that
# actor's process only.
HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
HOOK = f"{__name__}.start"
MODULES = ("rayjobs.worker", "trainer.workflow")

_thread: threading.Thread | None = None


def worker_env(*, deepspeed: bool, cpus: float | None, environ=None) -> dict[str, str]:
    """Env vars for a private run's Ray Train workers: the hook, unless the run uses DeepSpeed (transformers
    imports DeepSpeed's integration only when the run's process keeps it; `trainer.unused_imports`).

    With the hook, also `OMP_NUM_THREADS` as Ray would set it (the floor of the worker's `cpus`, at least 1),
    unless the user's environment sets it: Ray sets it only when the actor starts, after the hook imported
    torch, and OpenMP reads it once, when torch loads it. Without it a worker of 1 CPU on 16 cores would
    train on 16 threads."""
    if deepspeed:
        return {}
    env = {HOOK_ENV: HOOK}
    if "OMP_NUM_THREADS" not in (os.environ if environ is None else environ):
        env["OMP_NUM_THREADS"] = str(max(math.floor(cpus or 1), 1))
    return env


def start() -> None:
    """Ray's worker process set-up hook: torch now, the training stack on a thread."""
    global _thread
    from trainer.phases import mark

    mark("warmup_start")
    import torch  # noqa: F401  (see the module's docstring)

    mark("warmup_torch")
    _thread = threading.Thread(target=_import_all, name="prefsweep-warm-imports", daemon=True)
    _thread.start()


def _import_all() -> None:
    from trainer.phases import mark

    if import_stack(MODULES):
        mark("warmup_done")


def import_stack(modules=MODULES) -> bool:
    """Import `modules` (after torch, without DeepSpeed); False at the first that fails: the training function
    imports it again and reports the error. Also the fork server's preload (`rayjobs.warm_fork`)."""
    import torch  # noqa: F401  (see the module's docstring)

    # a run without DeepSpeed (worker_env): the same absent marker as trainer.unused_imports.skip_unused_deepspeed
    sys.modules.setdefault("deepspeed", None)  # type: ignore[arg-type]
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            return False
    return True


def wait() -> None:
    """Block until the warm-up thread (if this process started one) has finished its imports."""
    if _thread is not None:
        from trainer.phases import mark

        mark("warmup_wait")
        _thread.join()
