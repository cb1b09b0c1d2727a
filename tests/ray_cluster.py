"""A real two-node Ray cluster on one machine, for tests: `ray start --head` plus a second
`ray start --address` node, each `--block`ed in its own process group with its own temp dir.

Token auth is on with a token file of the cluster's own. The second node carries a custom resource
(`node2`) so a test can tell its work apart, and no `memory` resource: the sweep's trial drivers (and so
their Ray Train controllers, which Ray pins to the trial driver's node) ask for one byte of `memory`
(`rayjobs.sweep.TRIAL_DRIVER_RESOURCES`), so they stay on the head, as they would on a cluster whose
worker nodes come and go; only training workers run on the second node. Killing that node's raylet
(`kill_node2`) is the loss of a machine: its workers die with it.

The head notices a dead node after `health_check_period_ms` x `health_check_failure_threshold`; both are
lowered here (Ray's defaults take about 15 s) so a test does not wait on it. The nodes run with the settings
a private local Ray gets (`rayjobs.local_ray`: no prestarted idle workers, no metrics, no Train preemption
watcher), as a cluster's operator would set them, so a trial here pays what it pays on a local Ray.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rayjobs.local_ray import LOCAL_ENV, LOCAL_SYSTEM_CONFIG
from tests.test_ray_sweep import BIN, REPO, _stop, _wait_for_dashboard, free_ports

NODE2_RESOURCE = "node2"
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_initial_delay_ms": "1000"}


@dataclass
class Cluster:
    root: Path
    env: dict
    """Environment of a driver of this cluster: token auth, `RAY_ADDRESS`, the venv's python on PATH."""
    address: str
    dashboard: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: list = field(default_factory=list)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        node_env = {**self.env, **HEALTH_CHECK_ENV}
        node_env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args],
                                env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def add_node2(self, num_cpus: int = 2, timeout: float = 90) -> None:
        """The second node: `num_cpus` CPUs, `node2: num_cpus`, no `memory` (see the module docstring)."""
        self._start("node2", [f"--address={self.address}", f"--num-cpus={num_cpus}", "--memory=0",
                              f"--resources={{\"{NODE2_RESOURCE}\": {num_cpus}}}",
                              f"--temp-dir={self.root / 'ray2'}"])
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < 2:
            if self.procs["node2"].poll() is not None:
                raise RuntimeError(f"node2 exited:\n{(self.root / 'node2.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node2 did not join in {timeout}s")
            time.sleep(0.5)

    def alive_nodes(self) -> int:
        """ALIVE nodes by the dashboard's state API (with the token; an HTTP call, not a `ray list` process)."""
        query = "limit=100&detail=false&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        request = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?{query}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return len(json.load(response)["data"]["result"]["result"])

    def kill_node2(self) -> int:
        """The second machine is gone: SIGKILL its raylet, then every other process of that node (its
        workers, which a dead raylet leaves running as orphans for a while); return how many."""
        proc = self.procs.pop("node2")
        tree = psutil.Process(proc.pid).children(recursive=True)
        raylet = next(p for p in tree if p.name() == "raylet")
        raylet.send_signal(signal.SIGKILL)
        for process in [psutil.Process(proc.pid), *tree]:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        return len(tree)

    def node2_trials(self) -> set[str]:
        """The trials whose rank 0 trains on node2: a Ray Train worker process of that node holds the trial's
        MLflow spool (`<output_dir>/<trial>/mlflow_spool.jsonl`) open."""
        try:
            processes = psutil.Process(self.procs["node2"].pid).children(recursive=True)
        except (KeyError, psutil.NoSuchProcess):
            return set()
        found = set()
        for process in processes:
            try:
                found |= {Path(f.path).parent.name for f in process.open_files() if f.path.endswith("mlflow_spool.jsonl")}
            except psutil.Error:
                pass
        return found

    def ray_processes(self) -> list[str]:
        """The titles of the cluster's Ray worker processes (`ray::TrainController.run`, `ray::_QueueActor`, ...)."""
        titles = []
        for proc in self.procs.values():
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("ray::"):
                    titles.append(title.split()[0])
        return sorted(titles)

    def stop(self) -> None:
        for name in ("node2", "head"):
            if name in self.procs:
                _stop(self.procs.pop(name))
        for log in self.logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(num_cpus: int = 2, node_env: dict | None = None) -> Cluster:
    """The head node (`num_cpus` CPUs, dashboard on 127.0.0.1); add the second with `add_node2`. Every Ray
    process of either node (so every worker) gets `node_env` (e.g. an S3 endpoint and its credentials)."""
    # Ray puts unix sockets under its temp dir: keep the path short (sun_path holds 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="pscl-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    gcs, dashboard, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # workers import trainer/rayjobs/sweeps from this checkout, as a local Ray's do (rayjobs.local_ray)
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        **LOCAL_ENV,
        **(node_env or {}),
    })
    cluster = Cluster(root=root, env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, address=f"127.0.0.1:{gcs}",
                      dashboard=f"http://127.0.0.1:{dashboard}")
    try:
        proc = cluster._start("head", ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                                       f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                                       f"--dashboard-agent-listen-port={agent}", f"--temp-dir={root / 'ray'}",
                                       f"--num-cpus={num_cpus}",
                                       f"--system-config={json.dumps(LOCAL_SYSTEM_CONFIG)}"])
        _wait_for_dashboard(cluster.dashboard, proc)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def process_kind(process: psutil.Process) -> str:
    """What a cluster process is: a Ray worker's title (`ray::TrainController`, `ray::_QueueActor`,
    `ray::ImplicitFunc` for a Tune trial, `ray::IDLE` for a pooled worker) or a daemon's name."""
    cmdline = process.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split(".")[0]
    scripts = [Path(a).name for a in cmdline[1:3] if a.endswith(".py")]
    return scripts[0] if scripts else process.name()


class CpuByKind:
    """CPU-seconds (user + system) of every process under the cluster's nodes (and `extra` roots, e.g. the
    sweep driver), summed per `process_kind`. `sample()` it often: a process that exits between samples
    counts with its last sampled time (so these are lower bounds). A pooled worker counts under what it
    became (its start-up imports are paid for that actor)."""

    def __init__(self, cluster: Cluster, *extra: int):
        self.cluster, self.extra = cluster, extra
        self.seen: dict[int, list] = {}  # pid -> [kind, CPU-seconds]

    def sample(self) -> None:
        roots = [p.pid for p in self.cluster.procs.values()] + list(self.extra)
        for root in roots:
            try:
                top = psutil.Process(root)
                tree = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    with process.oneshot():
                        kind, times = process_kind(process), process.cpu_times()
                except psutil.Error:
                    continue
                record = self.seen.setdefault(process.pid, [kind, 0.0])
                if kind != "ray::IDLE":
                    record[0] = kind
                record[1] = max(record[1], times.user + times.system)

    def table(self) -> dict[str, tuple[int, float]]:
        """kind -> (processes, CPU-seconds), most CPU first."""
        totals: dict[str, list] = {}
        for kind, cpu in self.seen.values():
            total = totals.setdefault(kind, [0, 0.0])
            total[0] += 1
            total[1] += cpu
        return dict(sorted(((k, (n, s)) for k, (n, s) in totals.items()), key=lambda kv: -kv[1][1]))
