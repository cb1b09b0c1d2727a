"""A Ray worker's `py_executable` while a fork server runs (`rayjobs.warm_fork`): started by Ray as
`python -I -S warm_fork_client.py SOCKET default_worker.py ARGS...`, it asks the server for a worker process
with its own arguments, environment, working directory and standard streams, forwards the signals Ray sends it,
and exits with the worker's exit code. Standard library only (`-I -S`: no site-packages, ~20 ms to start).
Without a server that answers, it starts the worker itself, as Ray would have."""

import json
import os
import signal
import socket
import struct
import sys


def _start_here(argv):
    os.execv(sys.executable, [sys.executable, *argv])


def main():
    path, argv = sys.argv[1], sys.argv[2:]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
        replies = conn.makefile("rb")
        answer = replies.readline().split()
    except OSError:
        answer = []
    if len(answer) != 2 or answer[0] != b"pid":
        _start_here(argv)
    pid = int(answer[1])

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    answer = replies.readline().split()
    code = int(answer[1]) if len(answer) == 2 and answer[0] == b"exit" else 1
    if code < 0:  # the worker died of a signal: so does this process
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP: no handler to reset
            pass
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
