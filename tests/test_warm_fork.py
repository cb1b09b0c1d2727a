"""The fork server of a single run's Ray workers (`rayjobs.warm_fork`), driven as Ray drives it: its client started
as `python -I -S warm_fork_client.py SOCKET SCRIPT ARGS` with the environment, working directory and streams Ray
gives a worker. SCRIPT stands in for Ray's `default_worker.py`: it reports what the process it runs in looks like."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from rayjobs import warm_fork
from tests.conftest import REPO

CLIENT = [sys.executable, "-I", "-S", str(warm_fork.CLIENT)]

# What a worker process finds at its start, then a line on stdout and one on stderr, then `sleep` or the exit code.
SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    warm = sorted(name for name in ("torch", "transformers", "datasets", "trainer.workflow") if name in sys.modules)
    import torch
    with open(sys.argv[1], "w") as report:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(),
                   "warm": warm, "threads": torch.get_num_threads(), "main": __name__,
                   "mine": os.environ.get("WORKER_ONLY"), "server_only": os.environ.get("SERVER_ONLY")}, report)
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if sys.argv[2] == "sleep":
        time.sleep(600)
    sys.exit(int(sys.argv[2]))
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server, started as `warm_fork.start` starts it, with a variable of its own and 2 OpenMP threads."""
    root = tmp_path_factory.mktemp("fork")
    path = str(root / "s")
    env = {**os.environ, "SERVER_ONLY": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "rayjobs.warm_fork", path], cwd=REPO, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):  # bound before the imports: early clients wait in the backlog
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    yield path, process
    process.kill()
    process.wait()


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "worker_stand_in.py"
    path.write_text(SCRIPT)
    return path


def _client(socket_path, script, report, last, *, cwd, env=None, **kwargs):
    env = {**os.environ, "WORKER_ONLY": "mine", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("SERVER_ONLY", None)
    return subprocess.Popen([*CLIENT, socket_path, str(script), str(report), last], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert time.monotonic() < deadline, "no report"
        time.sleep(0.05)
    time.sleep(0.1)  # the report is written in one json.dump: let it finish
    return json.loads(path.read_text())


def test_a_forked_worker_has_the_stack_imported_and_the_clients_arguments_environment_directory_and_streams(
        server, script, tmp_path):
    socket_path, process = server
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    report = tmp_path / "report.json"
    client = _client(socket_path, script, report, "3", cwd=workdir)
    out, err = client.communicate(timeout=180)
    seen = json.loads(report.read_text())
    assert client.returncode == 3  # the worker's exit code
    assert out == "to stdout\n" and err.endswith("to stderr\n")  # the client's own streams
    assert seen["argv"] == [str(report), "3"] and seen["main"] == "__main__"
    assert seen["cwd"] == str(workdir)
    assert (seen["mine"], seen["server_only"]) == ("mine", None)  # the client's environment, not the server's
    assert seen["warm"] == ["datasets", "torch", "trainer.workflow", "transformers"]
    assert seen["ppid"] == process.pid and seen["pid"] not in (client.pid, process.pid)
    assert seen["threads"] == 1  # the client's OMP_NUM_THREADS, though OpenMP read the server's 2


def test_signals_reach_the_worker_and_a_worker_whose_client_is_killed_dies(server, script, tmp_path):
    socket_path, _ = server
    report = tmp_path / "a.json"
    client = _client(socket_path, script, report, "sleep", cwd=tmp_path)
    worker = _wait_for(report, client)["pid"]
    client.send_signal(signal.SIGTERM)  # what Ray sends a worker it stops
    client.communicate(timeout=60)
    assert client.returncode == -signal.SIGTERM  # the worker died of it, and so did the client
    assert not psutil.pid_exists(worker)

    report = tmp_path / "b.json"
    client = _client(socket_path, script, report, "sleep", cwd=tmp_path)
    worker = _wait_for(report, client)["pid"]
    client.kill()  # SIGKILL cannot be forwarded: the server sees the client's connection close
    client.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while psutil.pid_exists(worker):
        assert time.monotonic() < deadline, "the worker outlived its client"
        time.sleep(0.05)


def test_each_worker_has_a_process_group_of_its_own_so_ending_one_leaves_the_server_and_the_others(
        server, script, tmp_path):
    """Ray ends a worker's whole process group with it: in the server's group that took the server and every other
    worker along (a sweep's second trial then started cold)."""
    socket_path, process = server
    clients, workers = [], []
    for name in ("a", "b"):
        report = tmp_path / f"{name}.json"
        clients.append(_client(socket_path, script, report, "sleep", cwd=tmp_path))
        workers.append(_wait_for(report, clients[-1])["pid"])
    assert [os.getpgid(pid) for pid in workers] == workers
    os.killpg(workers[0], signal.SIGKILL)
    clients[0].communicate(timeout=60)
    assert clients[0].returncode == -signal.SIGKILL
    assert process.poll() is None and psutil.pid_exists(workers[1])
    clients[1].terminate()
    clients[1].communicate(timeout=60)
    assert clients[1].returncode == -signal.SIGTERM


def test_without_a_server_the_client_starts_the_worker_itself(script, tmp_path):
    report = tmp_path / "report.json"
    client = _client(str(tmp_path / "no-server"), script, report, "4", cwd=tmp_path)
    out, _ = client.communicate(timeout=180)
    seen = json.loads(report.read_text())
    assert client.returncode == 4 and out == "to stdout\n"
    assert seen["pid"] == client.pid  # the client became the worker (exec): a cold start, as Ray's own
    assert seen["warm"] == [] and seen["threads"] == 1


@pytest.mark.parametrize(("use_gpu", "deepspeed", "address", "expected"), [
    (False, None, None, True),
    (False, None, "127.0.0.1:6379", False),  # a cluster's workers: not forked from this machine
    (True, None, None, False),  # a CUDA driver initialised before a fork
    (False, "ds_z2.json", None, False),  # DeepSpeed's own imports (rayjobs.worker_warmup.worker_env)
])
def test_the_server_starts_only_for_cpu_workers_on_a_ray_of_this_process(monkeypatch, use_gpu, deepspeed, address,
                                                                         expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    assert warm_fork.wanted(use_gpu=use_gpu, deepspeed=deepspeed) is expected
