"""`benchmarks.ray_overhead --profile`: the CLI with Ray's start, `TorchTrainer.fit` and Ray's shutdown timed
(`python -m benchmarks._ray_profile prefsweep-args...`), marks from the Ray workers, and the printout of
where one Ray run's wall time went."""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROFILE_TAG = "[ray_overhead]"


# Put on the PYTHONPATH of a profiled run (the local Ray hands the driver's PYTHONPATH to its workers):
# every Ray worker process appends "NAME UNIX_TIME PID" lines to $RAY_OVERHEAD_MARKS when it starts,
# when it first imports torch, and when it starts the training function (imports rayjobs.worker).
SITECUSTOMIZE = """
import os, sys, time
_path = os.environ.get("RAY_OVERHEAD_MARKS")
try:
    _cmd = open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode("utf-8", "replace")
except OSError:
    _cmd = ""
if _path and "default_worker.py" in _cmd:
    def _mark(name):
        with open(_path, "a") as handle:
            handle.write(f"{name} {time.time():.3f} {os.getpid()}\\n")

    _mark("worker_process_start")

    class _Marks:
        watched = {"torch": "worker_imports_torch", "rayjobs.worker": "train_fn_start",
                   "trainer.workflow": "worker_imports_trainer"}

        def find_spec(self, name, path=None, target=None):
            label = self.watched.pop(name, None)
            if label:
                _mark(label)
            if label == "train_fn_start" and "torch" in sys.modules:
                _mark(f"torch_threads={sys.modules['torch'].get_num_threads()}")
                _mark(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
            return None

    sys.meta_path.insert(0, _Marks())
"""


def worker_marks(path: Path, t0_unix: float) -> dict:
    """Marks of the Ray worker that ran the training function, as seconds since the run started."""
    if not path.is_file():
        return {}
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    train_pids = {pid for name, _, pid in lines if name == "train_fn_start"}
    marks: dict[str, float | str] = {}
    for name, when, pid in lines:
        if pid in train_pids and "=" in name:  # a fact of the training worker, not a time
            key, value = name.split("=", 1)
            marks[f"worker_{key}"] = value
        elif pid in train_pids:
            marks.setdefault(name, float(when) - t0_unix)
    marks["ray_worker_processes"] = len({pid for name, _, pid in lines if name == "worker_process_start"})
    return marks



def profile_driver(argv: list[str]) -> int:
    """Run `prefsweep` (argv) with `ensure_ray`, `TorchTrainer.fit` and Ray's exit-time shutdown timed.

    Prints "[ray_overhead] NAME SECONDS" lines (seconds since this process started), read by
    `OutputClock`. Patches this process only; the run is otherwise the CLI's.
    """
    import atexit

    t0 = time.perf_counter()

    def mark(name: str) -> None:
        print(f"{PROFILE_TAG} {name} {time.perf_counter() - t0:.3f}", flush=True)

    from ray.train.torch import TorchTrainer

    import rayjobs.local_ray
    import rayjobs.train

    mark("imports_done")

    def timed(owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            mark(f"{name}_begin")
            try:
                return inner(*args, **kwargs)
            finally:
                mark(f"{name}_end")

        setattr(owner, attr, wrapper)

    timed(rayjobs.local_ray, "ensure_ray", "ensure_ray")
    timed(TorchTrainer, "fit", "fit")
    # atexit runs the last registered first: ours (registered once Ray is up) before Ray's own hook.
    ensure_ray = rayjobs.local_ray.ensure_ray

    def shutdown_timed() -> None:
        import ray

        from rayjobs.local_ray import stop_autoscaler_monitor

        mark("atexit_first")
        # registered after the CLI's own exit hook, so it runs first: do what that hook does, then what Ray's does
        stop_autoscaler_monitor()
        ray.shutdown()  # what Ray's own exit hook would do next; timed here
        mark("ray_shutdown_end")

    def ensure_ray_then_mark(*args, **kwargs):
        how = ensure_ray(*args, **kwargs)
        atexit.register(shutdown_timed)
        return how

    rayjobs.local_ray.ensure_ray = ensure_ray_then_mark
    from rayjobs.cli import main as cli_main

    return cli_main(argv)


def print_profile(run: dict) -> None:
    """Where the instrumented Ray run's wall time went, from `--profile-driver`'s marks."""
    p, ph = run["profile_seconds"], run["phase_seconds"]
    # The worker's own training start/end are not marked; the output clock's train_end arrives through
    # Ray's log forwarding, late. Place train_runtime so that it ends where the output says, but never
    # after fit returns.
    train_end = min(x for x in (ph.get("train_end"), p.get("fit_end")) if x is not None) if ph.get("train_end") else None
    train_begin = train_end - run["train_runtime"] if train_end is not None else None
    spans = [
        ("process start -> driver imports (ray, ray.train.torch, torch)", 0.0, p.get("imports_done")),
        ("-> ensure_ray called (config validated: imports transformers)", p.get("imports_done"), p.get("ensure_ray_begin")),
        ("ensure_ray (local Ray start: GCS, raylet, dashboard)", p.get("ensure_ray_begin"), p.get("ensure_ray_end")),
        ("-> TorchTrainer.fit called", p.get("ensure_ray_end"), p.get("fit_begin")),
        ("fit -> worker imports torch (controller, worker actor start)", p.get("fit_begin"),
         p.get("worker_imports_torch")),
        ("-> training function starts (process group, Ray Train setup)", p.get("worker_imports_torch"),
         p.get("train_fn_start")),
        ("-> worker has imported trainer (transformers, datasets...)", p.get("train_fn_start"),
         p.get("worker_imports_trainer")),
        ("-> training starts (data, model, reference; fit_end - train part)", p.get("worker_imports_trainer"),
         train_begin),
        ("training (train_runtime)", train_begin, train_end),
        ("-> fit returns (final eval, save, worker group shutdown)", train_end, p.get("fit_end")),
        ("fit -> main returns (summary)", p.get("fit_end"), p.get("atexit_first")),
        ("ray.shutdown at exit", p.get("atexit_first"), p.get("ray_shutdown_end")),
        ("-> exit (interpreter teardown)", p.get("ray_shutdown_end"), ph.get("exit")),
    ]
    print(f"\nprofile of one Ray run ({run['wall_seconds']:.1f} s wall, train_runtime {run['train_runtime']:.1f} s):")
    for label, a, b in spans:
        print(f"  {label:<68}{b - a:>7.1f} s" if a is not None and b is not None else f"  {label:<68}{'?':>7}")
    facts = {k: v for k, v in p.items() if k in ("worker_torch_threads", "worker_OMP_NUM_THREADS",
                                                  "ray_worker_processes")}
    print(f"  training worker: {facts} (the in-process run uses torch's default, one thread per core)")


if __name__ == "__main__":
    sys.exit(profile_driver(sys.argv[1:]))
