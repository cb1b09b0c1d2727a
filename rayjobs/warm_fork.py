"""A fork server for the Ray Train workers of a run or sweep on the local Ray it starts: a worker process starts with
the training stack imported.

On a private local Ray (`prefsweep train` without `RAY_ADDRESS`), a worker process only starts once the driver has
started Ray and Ray Train has set up the worker group; it then imports torch, transformers, datasets and `trainer`
(~4-6 s on 2 cores, one core busy) before its first step. The in-process run (`use_ray: false`) imports them from
its first second. Here the driver starts one process (`serve`) as soon as it has read the config and seen that it
asks for Ray: that process imports the stack beside Ray's start and the config's validation, then waits. Ray starts
the workers through `client.py` (the `py_executable` of their runtime env): the client hands its arguments,
environment, working directory and standard streams to the server, which forks; the child runs Ray's
`default_worker.py` as its own `__main__`, with the stack already imported. Like `multiprocessing`'s forkserver
with preloaded modules, or PyTorch's DataLoader workers, which fork a process that has imported torch. A sweep on
the local Ray it starts (`rayjobs.sweep`) runs one server for all its trials' workers; each trial, in an actor of its
own, passes the server's socket to its workers' runtime env (`py_executable(socket_path)`).

Only where forking is sound and this checkout is ours to run: a private local Ray, CPU workers (a CUDA driver
initialised before a fork is not usable in the child, and transformers' imports may query it), no DeepSpeed (the
hook's rule, `rayjobs.worker_warmup.worker_env`). The server never runs a torch operation, so no OpenMP thread
pool exists to be lost in the fork; the child sets its torch threads from its `OMP_NUM_THREADS` (OpenMP read the
server's at import). When the server is gone or refuses, the client starts the worker as Ray would have
(`os.execv`), so a worker always starts.

Lifetime: the server runs in a session of its own (a Ctrl-C at the terminal reaches the driver, which stops Ray),
dies with the driver (`PR_SET_PDEATHSIG`) and is killed at the driver's exit; a child dies with the server, and
the server kills a child whose client is gone (Ray ends a worker by ending the process it started: the client).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT = Path(__file__).with_name("warm_fork_client.py")
HEADER = struct.Struct("!I")  # the length of the JSON request that follows

_server: subprocess.Popen | None = None
_socket_path: str | None = None


def forkable(*, use_gpu: bool, deepspeed) -> bool:
    """Whether workers may be forked from the server: CPU workers without DeepSpeed, on Linux."""
    return not use_gpu and not deepspeed and sys.platform.startswith("linux")


def wanted(*, use_gpu: bool, deepspeed) -> bool:
    """Whether to start the server for a run's (or a sweep's) workers: forkable ones, on a Ray that this process will
    start."""
    return not os.environ.get("RAY_ADDRESS") and forkable(use_gpu=use_gpu, deepspeed=deepspeed)


def start() -> str:
    """Start the server for this process's run or sweep (once); its imports then run beside Ray's start. Returns
    its socket's path, which the processes that build the workers' runtime env pass to `py_executable`."""
    global _server, _socket_path
    if _server is not None:
        return _socket_path
    from rayjobs.local_ray import LOCAL_ENV, _worker_pythonpath

    directory = tempfile.mkdtemp(prefix="prefsweep-fork-")
    _socket_path = os.path.join(directory, "s")
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in LOCAL_ENV.items()}, "PYTHONPATH": _worker_pythonpath()}
    _server = subprocess.Popen([sys.executable, "-m", __name__, _socket_path], env=env, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    atexit.register(stop)
    return _socket_path


def py_executable(socket_path: str | None = None) -> str | None:
    """The `py_executable` that starts a worker through a server: the one at `socket_path` (a sweep's, started by
    the sweep's driver; this runs in a trial's actor), else this process's own; None when there is none."""
    if socket_path is None and _server is not None and _server.poll() is None:
        socket_path = _socket_path
    if not socket_path or not os.path.exists(socket_path):
        return None
    return " ".join(shlex.quote(part) for part in (sys.executable, "-I", "-S", str(CLIENT), socket_path))


def stop() -> None:
    """Kill the server (its children die with it) and remove its socket."""
    global _server
    if _server is not None and _server.poll() is None:
        _server.kill()
        _server.wait(timeout=10)
    _server = None
    if _socket_path:
        with contextlib.suppress(OSError):
            os.unlink(_socket_path)
            os.rmdir(os.path.dirname(_socket_path))


# ----------------------------------------------------------------------------------------- the server


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < HEADER.size:
        raise ValueError("short request")
    (size,) = HEADER.unpack_from(data)
    body = data[HEADER.size:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    return json.loads(body), fds


def _run_child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the worker process Ray asked for."""
    import runpy
    import traceback

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    # a process group of its own, as a worker Ray starts has: Ray ends a worker's whole group when it ends the
    # worker, which would otherwise be the server's, with every other worker in it
    os.setsid()
    _die_with_parent()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    from trainer.phases import mark

    mark("warm_fork_child")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # OpenMP read the server's value when torch loaded it
        import torch

        torch.set_num_threads(int(threads))
    code = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001  what a worker process would print before it dies
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def serve(path: str) -> None:
    """Listen on `path`, import the training stack, then fork one worker per request until killed."""
    import select

    from rayjobs.worker_warmup import MODULES, import_stack

    _die_with_parent()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)  # clients that come early wait in the backlog until the imports are done
    import_stack(MODULES)
    from trainer.phases import mark

    mark("warm_fork_ready")

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    clients: dict[int, socket.socket | None] = {}  # child pid -> its client's connection (None: client gone)
    while True:
        ready, _, _ = select.select([listener, wake_read, *filter(None, clients.values())], [], [])
        for item in ready:
            if item is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _read_request(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in (conn, *filter(None, clients.values())):
                        other.close()
                    os._exit(_run_child(request, fds))
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"pid {pid}\n".encode())
                clients[pid] = conn
            elif item is wake_read:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
            else:  # a client's connection: it only closes, when Ray has ended the client
                pid = next(p for p, c in clients.items() if c is item)
                item.close()
                clients[pid] = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        while clients:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = clients.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
