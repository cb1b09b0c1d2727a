"""An MLflow server with basic auth (`mlflow server --app-name basic-auth`): `prefsweep train` logs to it
with the credentials a user puts in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and neither ever
lands in the run's params, tags, metrics, artifacts, the output dir, the spool, or the command's output.

The server's admin account is the user here (name and password random per test, set through the auth
config file and MLFLOW_AUTH_ADMIN_PASSWORD, so no default password is involved); requests without
credentials or with a wrong password are refused first, so the run's success means the credentials were sent.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.mlflow_servers import MlflowServer
from tests.test_mlflow_outage import training_config

REPO = Path(__file__).resolve().parents[1]


def _status(url: str, auth: tuple[str, str] | None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def every_file_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return hits


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_credentials_from_the_environment_are_used_and_never_recorded(tiny_model, data_dir, tmp_path):
    user, password = f"ps-user-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path / 'auth.db'}\n"
                        f"admin_username = {user}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'server.db'}", extra_args=("--app-name", "basic-auth"),
                          env={"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}).start(timeout_s=300)
    try:
        search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=10"
        assert _status(search, None) == 401
        assert _status(search, (user, "wrong-" + password)) == 401
        assert _status(search, (user, password)) == 200

        out = tmp_path / "run"
        cfg = training_config(tiny_model, data_dir, out, max_steps=3, eval_steps=3, plot_loss=True)
        config_path = tmp_path / "train.yaml"
        config_path.write_text(yaml.safe_dump(cfg.given, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_EXPERIMENT_NAME": "prefsweep-auth",
                    "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        train = subprocess.run([sys.executable, "-m", "rayjobs.train", str(config_path), "use_ray=false"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=400)
        output = train.stdout + train.stderr
        assert train.returncode == 0, output[-6000:]

        client = MlflowClient(server.url)  # reads with the same credentials (set below, as a user's shell has them)
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
        try:
            experiment = client.get_experiment_by_name("prefsweep-auth")
            (run,) = client.search_runs([experiment.experiment_id])
            assert run.info.status == "FINISHED"
            assert len(client.get_metric_history(run.info.run_id, "loss")) == 3  # logged through the auth server
            artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        server.stop()

    assert any(p.suffix == ".png" for p in artifacts.rglob("*")), sorted(artifacts.rglob("*"))
    secret_values = {"password": password, "username": user}
    recorded = {**{f"param {k}": v for k, v in run.data.params.items()},
                **{f"tag {k}": v for k, v in run.data.tags.items()},
                **{f"metric key {k}": k for k in run.data.metrics}}
    for what, value in secret_values.items():
        assert not [k for k, v in recorded.items() if value in k or value in str(v)], what
        assert value not in output, what
    assert not [k for k in run.data.params if "PASSWORD" in k.upper() or "USERNAME" in k.upper()]
    # the downloaded artifacts, the run's output dir (configs, trainer state, spool) and the server's
    # artifact store: not one byte sequence of either
    needles = [password.encode(), user.encode()]
    assert every_file_holding(artifacts, needles) == []
    assert every_file_holding(out, needles) == []
    assert every_file_holding(server.artifacts, needles) == []
    print(f"basic auth: {len(run.data.params)} params, {len(run.data.tags)} tags, "
          f"{len(list(artifacts.rglob('*')))} artifacts, {sum(1 for p in out.rglob('*') if p.is_file())} output files "
          "scanned; the credentials appear in none")
