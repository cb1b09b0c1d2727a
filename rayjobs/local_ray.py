"""Start a private local Ray, or attach to the cluster named by `RAY_ADDRESS`.

- `RAY_ADDRESS` set (inside `ray job submit`, or a user pointing at a cluster): attach to it. The job's
  runtime env (working dir, env vars) already reaches every worker.
- Not set: start a local Ray inside this process. `address="local"` on purpose: a bare `ray.init()`
  would attach to any other Ray that happens to run on this machine (another user's `ray start`).
  The node is told to use the loopback address and the dashboard listens on 127.0.0.1 only. A sweep's
  Ray keeps the dashboard although it is 10 processes: Ray Train's placement-group cleaner asks its state
  API every second whether the controller lives; without it (Ray 2.60, checked) the query looks for a Ray
  on this machine instead and the cleaner dies ("Found multiple active Ray instances" when another
  user's Ray runs). A single run's Ray (`dashboard=False`) has no cleaner (`rayjobs.torch_trainer`)
  and no dashboard: ~7 CPU-seconds of start-up saved on 2 cores. It is also started lean
  (`single_run_node`): no dashboard process at all, no autoscaler monitor and a minimal dashboard agent,
  which `ray.init` would otherwise wait for one after the other (2.2-3.2 s to a started Ray, 1.3 s lean).
  Ray's gRPC ports still listen on all interfaces, which is why token authentication stays on: with
  `RAY_AUTH_MODE` unset we set it to `token`, and Ray creates `~/.ray/auth_token` on first use (or
  reads the file named by `RAY_AUTH_TOKEN_PATH`).

Workers of a local Ray must import `trainer`, `rayjobs` and `sweeps` even when prefsweep is not
installed (a plain checkout), so the checkout root is put on their `PYTHONPATH`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger("prefsweep")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
# Env vars a local Ray hands to every worker (and this driver), besides PYTHONPATH.
LOCAL_ENV = {
    "TOKENIZERS_PARALLELISM": "false",  # tokenizers forks inside Ray workers otherwise warn on every batch
    # Ray Train's preemption watcher (an extra actor process per run) watches for spot nodes being
    # drained; a laptop has none, and on 2 cores the process costs each trial seconds.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's controller and worker metric callbacks update Prometheus gauges at every poll of the
    # workers; nothing scrapes a private local Ray (read by the driver that builds the TorchTrainer).
    "RAY_TRAIN_METRICS_ENABLED": "0",
    # Ray's usage-stats reporter (a dashboard module) would gather and try to send cluster facts.
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Raylet/GCS settings of a private local Ray (`ray.init(_system_config=...)`; a config's own
# `ray.init_kwargs._system_config` keys win). Measured with psutil over the run's processes (issue 19).
LOCAL_SYSTEM_CONFIG = {
    # When the first driver connects the raylet starts one idle worker per CPU for the job's runtime env.
    # Ray Train's controller always runs in a runtime env of its own (it passes env_vars) and every actor
    # it starts inherits it, so none of those workers is ever leased: two wasted Python starts on 2 cores.
    "prestart_worker_first_driver": False,
    # Every Ray process records and exports Prometheus metrics to the dashboard agent; nothing reads them
    # on a private local Ray.
    "enable_metrics_collection": False,
    # Ray starts workers 15 nice levels below the raylet (`nice(15)`, so that its daemons always win the CPU).
    # Here the worker is the training run the user launched, on the user's own machine: at nice 15 every
    # wake-up of the driver, raylet, GCS or dashboard preempts one of its torch threads and stalls the
    # other at the next barrier, and any other program the user runs comes first. The in-process run
    # (`use_ray: false`) trains at the user's own priority; so does a worker of a local Ray now.
    "worker_niceness": 0,
}


def attach_address() -> str | None:
    """The cluster to attach to, or None for a private local Ray."""
    return os.environ.get("RAY_ADDRESS") or None


def _worker_pythonpath() -> str:
    parts = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def _token_auth() -> None:
    """Token authentication on unless the user turned it off (`RAY_AUTH_MODE=disabled`).

    Ray reads `RAY_AUTH_MODE` and the token once per process, possibly at `import ray`, before this
    runs (and before a test sets `RAY_AUTH_TOKEN_PATH`); Ray's own switch refreshes both. Attaching
    to a cluster needs it too: Ray turns token mode on by itself only for clusters it starts.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"].lower() != "token":
        logger.warning("RAY_AUTH_MODE=%s: Ray token authentication is off", os.environ["RAY_AUTH_MODE"])
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader

    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()


def ensure_ray(*, num_cpus: int | None = None, num_gpus: int | None = None, log_to_driver: bool = True,
               init_kwargs: dict | None = None, dashboard: bool = True) -> str:
    """Make sure this process is connected to Ray; return how: "existing", "attached" or "local".

    `log_to_driver=False` keeps workers' output in Ray's log files (sweeps: the trial table is the view).
    `init_kwargs` (a config's `ray.init_kwargs`, LF's `ray_init_kwargs`) go to `ray.init` over ours.
    `dashboard`: whether a private local Ray starts its dashboard (a cluster's is the cluster's).
    """
    extra = dict(init_kwargs or {})
    import ray

    if ray.is_initialized():
        return "existing"
    _token_auth()
    address = attach_address()
    if address is not None:
        ray.init(**{"address": address, "logging_level": logging.WARNING, "log_to_driver": log_to_driver, **extra})
        return "attached"
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    system_config = {**LOCAL_SYSTEM_CONFIG, **(extra.pop("_system_config", None) or {})}
    runtime_env = dict(extra.pop("runtime_env", None) or {})
    local_env = {key: os.environ[key] for key in LOCAL_ENV}  # the user's own value where set
    runtime_env["env_vars"] = {"PYTHONPATH": _worker_pythonpath(), **local_env, **runtime_env.get("env_vars", {})}
    # lean unless a config's `ray.init_kwargs: {include_dashboard: true}` asks for the dashboard
    lean = not dashboard and not extra.get("include_dashboard")
    with single_run_node() if lean else contextlib.nullcontext():
        ray.init(**{
            "address": "local",
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "include_dashboard": dashboard,
            "dashboard_host": LOOPBACK,
            "_node_ip_address": LOOPBACK,
            "runtime_env": runtime_env,
            "_system_config": system_config,
            "logging_level": logging.WARNING,
            "log_to_driver": log_to_driver,
            **extra,
        })
    # registered after Ray's own exit hook, so it runs first (atexit is last in, first out)
    atexit.register(stop_autoscaler_monitor)
    return "local"


# Why `single_run_node` asks for the minimal dashboard agent (Ray's own test: the dashboard's packages missing).
_MINIMAL_AGENT = ImportError("prefsweep: a single run's private Ray runs the minimal dashboard agent")


@contextlib.contextmanager
def single_run_node():
    """While `ray.init` starts a single run's private Ray: no dashboard process, no autoscaler monitor, and the
    dashboard agent in its minimal form. Ray starts them one after the other and waits for each: the dashboard
    process (with `include_dashboard=False` still started, for usage stats, which are off) until it has written
    its URL; the raylet until its dashboard agent, which imports the HTTP, gRPC and metrics stacks, has come up.
    A run that owns its Ray uses none of them: no state API (no placement-group cleaner, `rayjobs.torch_trainer`),
    no job submission, no metrics (off), nothing to autoscale. Measured on 2 cores: `ray.init` 2.2-3.2 s, 1.3 s
    lean, and ~2.5 CPU-s less start-up beside the config's validation. What stays: GCS, raylet, the runtime-env
    agent (workers' env vars), the log monitor (workers' output on this console).

    Ray 2.60 internals (`Node.start_monitor`, `Node.start_api_server`, and the check `services.start_raylet`
    makes for a minimal install); where a Ray release lacks them, Ray starts as it always does."""
    try:
        from ray._private import utils as ray_utils
        from ray._private.node import Node

        saved = {"start_monitor": Node.__dict__["start_monitor"], "start_api_server": Node.__dict__["start_api_server"],
                 "dependency_error": ray_utils.get_dashboard_dependency_error}
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def no_api_server(self, *args, **kwargs):
        self._webui_url = None  # what a minimal install's node holds

    Node.start_monitor = lambda self: None
    Node.start_api_server = no_api_server
    ray_utils.get_dashboard_dependency_error = lambda: _MINIMAL_AGENT
    try:
        yield
    finally:
        Node.start_monitor = saved["start_monitor"]
        Node.start_api_server = saved["start_api_server"]
        ray_utils.get_dashboard_dependency_error = saved["dependency_error"]


def stop_autoscaler_monitor() -> bool:
    """Kill the autoscaler monitor of the local Ray this process started; True when one was running (a sweep's:
    a single run's Ray starts none, `single_run_node`).

    A local Ray has nothing to autoscale, but Ray starts the monitor anyway and stops it last, after the GCS:
    the monitor then handles SIGTERM by talking to a GCS that is gone, and Ray waits its full second before it
    kills it (measured: `ray.shutdown` 1.35 s, 0.13 s with the monitor gone first). SIGKILL, not SIGTERM: on
    SIGTERM it reports "The autoscaler failed" to the driver's console. Uses Ray's node object (2.60 layout);
    with another layout it does nothing and Ray stops the monitor as before."""
    stopped = False
    for process in local_processes("monitor"):
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
            stopped = True
    return stopped


def local_processes(kind: str) -> list:
    """The `subprocess.Popen`s of one kind ("gcs_server", "raylet", "log_monitor", "monitor", ...) of the local Ray
    this process started; none when it started none (attached, or not connected). Ray's node object, 2.60 layout:
    with another layout, none."""
    import ray._private.worker as ray_worker

    processes = getattr(getattr(ray_worker, "_global_node", None), "all_processes", None) or {}
    return [info.process for info in processes.get(kind, []) if getattr(info, "process", None) is not None]


def cluster_resources() -> dict[str, float]:
    """Total logical resources of the connected cluster (CPU, GPU, custom)."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}
