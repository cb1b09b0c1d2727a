"""Start a private local Ray, or attach to the cluster named by `RAY_ADDRESS`.

- `RAY_ADDRESS` set (inside `ray job submit`, or a user pointing at a cluster): attach to it. The job's
  runtime env (working dir, env vars) already reaches every worker.
- Not set: start a local Ray inside this process. `address="local"` on purpose: a bare `ray.init()`
  would attach to any other Ray that happens to run on this machine (another user's `ray start`).
  The node is told to use the loopback address and the dashboard listens on 127.0.0.1 only (Ray
  Train's state queries go through it; without it the placement-group cleaner complains every
  second). Ray's gRPC ports still listen on all interfaces, which is why token authentication stays
  on: with `RAY_AUTH_MODE` unset we set it to `token`, and Ray creates `~/.ray/auth_token` on first
  use (or reads the file named by `RAY_AUTH_TOKEN_PATH`).

Workers of a local Ray must import `trainer`, `rayjobs` and `sweeps` even when prefsweep is not
installed (a plain checkout), so the checkout root is put on their `PYTHONPATH`.
"""

from __future__ import annotations

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
               init_kwargs: dict | None = None) -> str:
    """Make sure this process is connected to Ray; return how: "existing", "attached" or "local".

    `log_to_driver=False` keeps workers' output in Ray's log files (sweeps: the trial table is the view).
    `init_kwargs` (a config's `ray.init_kwargs`, LF's `ray_init_kwargs`) go to `ray.init` over ours.
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
    runtime_env = dict(extra.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {"PYTHONPATH": _worker_pythonpath(), **LOCAL_ENV, **runtime_env.get("env_vars", {})}
    ray.init(**{
        "address": "local",
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "include_dashboard": True,
        "dashboard_host": LOOPBACK,
        "_node_ip_address": LOOPBACK,
        "runtime_env": runtime_env,
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
        **extra,
    })
    return "local"


def cluster_resources() -> dict[str, float]:
    """Total logical resources of the connected cluster (CPU, GPU, custom)."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}
