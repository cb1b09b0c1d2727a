"""Real tracking servers for tests: `mlflow server` on 127.0.0.1 (stoppable and restartable on the same
port and store) and a throwaway PostgreSQL cluster for its backend. Each runs in its own process group and
is killed at the end."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` with one uvicorn worker; `stop()` then `start()` brings it back on the same port
    and store, as an operator's restart would."""

    def __init__(self, workdir: Path, backend_store_uri: str, port: int | None = None, workers: int = 1,
                 artifacts: str | None = None, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()):
        """artifacts: the artifact store the server proxies (default a local folder; e.g. `s3://...`, with
        its endpoint and credentials in `env`, which is added to the server's environment)."""
        self.workdir = Path(workdir)
        self.extra_args, self.env = tuple(extra_args), dict(env or {})  # e.g. ("--app-name", "basic-auth")
        self.workers = workers
        self.backend_store_uri = backend_store_uri
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts or self.workdir / "server-artifacts"
        self.log_path = self.workdir / f"mlflow-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), "--backend-store-uri", self.backend_store_uri,
               "--artifacts-destination", str(self.artifacts), *self.extra_args]  # fmt: skip
        # No job-runner processes: they are not needed to log runs and outlive the server on SIGTERM.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return wait_until_up(self, "/health", "mlflow server", timeout_s)

    def stop(self) -> None:
        if self.proc is None:
            return
        _stop_group(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""


def _stop_group(proc: subprocess.Popen) -> None:
    proc.terminate()  # the CLI forwards SIGTERM to its uvicorn child and waits for it
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    try:  # anything left in the session the server started
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------- postgres

APT_LINE = "apt-get update && apt-get install -y postgresql"


def postgres_bin() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: on PATH, or where Debian's postgresql package puts them
    (/usr/lib/postgresql/<version>/bin, not on PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").is_file() and Path(folder, "pg_ctl").is_file():
            return Path(folder)
    return None


class Postgres:
    """A private PostgreSQL cluster on 127.0.0.1 (trust auth, no Unix socket in a shared place). PostgreSQL
    refuses to run as root, so as root it runs as the `postgres` user in a folder that user owns."""

    def __init__(self, bin_dir: Path):
        self.bin = Path(bin_dir)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="prefsweep-pg-"))
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            import pwd

            self.user = pwd.getpwnam("postgres")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the driver the test extras install.
        self.uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              start_new_session=True, check=True)  # fmt: skip

    def start(self) -> Postgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-o", opts, "-w", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        except (subprocess.SubprocessError, OSError):
            pid_file = self.data / "postmaster.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until_up(server, path: str, what: str, timeout_s: float, poll_s: float = 0.25):
    """Poll `server.url + path` until it answers 200; stop `server` and raise with its log if its process
    exits or `timeout_s` passes. Returns `server`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.proc.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}{path}", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{what} not up in {timeout_s} s:\n{server.log()}")
        time.sleep(poll_s)
