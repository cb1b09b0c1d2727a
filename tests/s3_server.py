"""A real S3 endpoint for tests: `moto_server` (moto's S3 in server mode) on 127.0.0.1, in its own process
group, killed at the end. Clients find it the way they find any S3 endpoint: `AWS_ENDPOINT_URL` (boto3,
pyarrow's S3FileSystem and so Ray's storage_path), `MLFLOW_S3_ENDPOINT_URL` (MLflow's artifact store) and
fake `AWS_*` credentials, all in `S3Server.env()`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.mlflow_servers import free_port, wait_until_up

REGION = "us-east-1"


def moto_server_bin() -> str | None:
    """`moto_server` of this interpreter's environment (installed by moto[server], the test extras)."""
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.is_file() else shutil.which("moto_server")


class S3Server:
    """`moto_server` on a free loopback port; `env()` points S3 clients at it; `make_bucket(name)`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """What a process needs to talk to this endpoint (credentials moto accepts, any non-empty ones)."""
        return {"AWS_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout_s: float = 60) -> S3Server:
        binary = moto_server_bin()
        if binary is None:
            raise RuntimeError("moto_server not found: pip install 'moto[server]' (the test extras hold it)")
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)], cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return wait_until_up(self, "/moto-api/", "moto_server", timeout_s, poll_s=0.2)

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` through pyarrow (as the product reaches S3); its `s3://` URI."""
        import pyarrow.fs

        fs = pyarrow.fs.S3FileSystem(endpoint_override=self.url, access_key="testing", secret_key="testing",
                                     region=REGION, scheme="http", allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""


class Bucket:
    """Reads a bucket of `server` the way the product does (pyarrow.fs), and a sweep's Tune state in it
    (`storage_path: s3://<bucket>/<prefix>`)."""

    def __init__(self, server: S3Server, name: str, prefix: str, sweep: str):
        import pyarrow.fs

        self.pafs, self.name, self.sweep_path = pyarrow.fs, name, f"{prefix}/{sweep}"
        self.fs = pyarrow.fs.S3FileSystem(endpoint_override=server.url, access_key="testing",
                                          secret_key="testing", region=REGION, scheme="http")

    def read(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.name}/{path}") as f:
                return f.read()
        except OSError:
            return None

    def files(self, prefix: str) -> list[str]:
        selector = self.pafs.FileSelector(f"{self.name}/{prefix}", recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.path[len(self.name) + 1:] for i in infos if i.type == self.pafs.FileType.File)

    def tune_trials(self) -> dict[str, dict]:
        """trial name -> {"id", "status"} from the sweep's latest Tune experiment state in the bucket."""
        states = [p for p in self.files(self.sweep_path) if p.rsplit("/", 1)[-1].startswith("experiment_state-")]
        if not states:
            return {}
        try:
            state = json.loads(self.read(max(states)) or b"")
        except ValueError:
            return {}
        return {(t := json.loads(trial_json))["custom_trial_name"]: {"id": t["trial_id"], "status": t["status"]}
                for trial_json, _ in state["trial_data"]}

    def checkpoint_step(self, trial: str) -> int:
        """The step of the trial's latest checkpoint registered by Ray Train (0: none yet)."""
        try:
            snapshot = json.loads(self.read(f"{self.sweep_path}/{trial}/train/checkpoint_manager_snapshot.json") or b"")
        except ValueError:
            return 0
        name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        return int(name.rsplit("-", 1)[1]) if name else 0
