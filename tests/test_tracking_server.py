"""A sweep recorded over HTTP: the test starts a real `mlflow server` on 127.0.0.1 (SQLite backend, proxied
artifact store in tmp), logs a parent and two trials through it exactly as against the SQLite default, checks
them through the server and in the server's own backend and artifact folder, and stops the server."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.leaderboard import TrialSummary
from tests.mlflow_servers import MlflowServer
from tests.tracking_helpers import EXPECTED_PNGS, METRIC, artifact_names, make_config, run_trial, start_parent


@pytest.fixture
def mlflow_server(tmp_path):
    """(url, backend db path, artifacts folder) of a server that lives for one test."""
    db = tmp_path / "server.db"
    server = MlflowServer(tmp_path, f"sqlite:///{db}").start()
    try:
        yield server.url, db, server.artifacts
    finally:
        server.stop()


def test_sweep_over_http_lands_in_the_server_store(mlflow_server, tmp_path, monkeypatch):
    url, db, artifacts = mlflow_server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "prefsweep-http")
    assert mlflow_store.tracking_uri() == url and mlflow_store.ui_command() == f"open {url}"

    exp_id = mlflow_store.ensure_experiment()
    sweep = start_parent(tmp_path / "sweep", "http-sweep", experiment_id=exp_id)
    parent = sweep.run_id
    plan = {  # eval accuracies at steps 2, 4: sigmoid (0.5, 0.5) -> final 0.5; hinge (0.75, 1.0) -> final 1.0
        "t0_sigmoid": (make_config("sigmoid", 0.1), [0.25, 0.5, 0.5, 0.5]),
        "t1_hinge": (make_config("hinge", 0.3), [0.5, 0.75, 1.0, 1.0]),
    }
    trials = []
    for name, (config, accuracies) in plan.items():
        cb = run_trial(
            tmp_path / name, experiment_id=exp_id, run_name=name, parent_run_id=parent, config=config,
            accuracies=accuracies,
        )  # fmt: skip
        trials.append(TrialSummary(name, config["pref_loss"], config["pref_beta"], None, 0.0, None, None, cb.run_id,
                                   config, []))  # fmt: skip
    text = sweep.finish(trials, metric=METRIC, mode="max")
    assert sweep.delivered
    assert [line.split()[1] for line in text.splitlines()[3:]] == ["t1_hinge", "t0_sigmoid"]

    client = MlflowClient(url)
    experiment = client.get_experiment(exp_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # uploads go through the server
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(c.info.run_name for c in children) == ["t0_sigmoid", "t1_hinge"]
    for child in children:
        config, accuracies = plan[child.info.run_name]
        assert child.info.status == "FINISHED"
        assert child.data.params["pref_loss"] == config["pref_loss"]
        assert child.data.params["pref_beta"] == str(config["pref_beta"])
        assert child.data.params["hub_token"] == "***"
        history = client.get_metric_history(child.info.run_id, "rewards/accuracies")
        assert [(m.step, m.value) for m in history] == list(enumerate(accuracies, start=1))
        assert EXPECTED_PNGS <= artifact_names(client, child.info.run_id)
        with Image.open(
            client.download_artifacts(child.info.run_id, "training_loss.png", str(tmp_path))
        ) as image:
            image.verify()

    leaderboard_csv = Path(client.download_artifacts(parent, "leaderboard.csv", str(tmp_path))).read_text()
    assert [r["trial"] for r in csv.DictReader(io.StringIO(leaderboard_csv))] == ["t1_hinge", "t0_sigmoid"]
    best = yaml.safe_load(
        Path(client.download_artifacts(parent, "best_config.yaml", str(tmp_path))).read_text()
    )
    assert best == {**plan["t1_hinge"][0], "hub_token": "***"}

    # The server really holds it: its own backend and its artifact folder, read without HTTP.
    backend = MlflowClient(f"sqlite:///{db}")
    assert backend.get_run(parent).data.tags["prefsweep.best_trial"] == "t1_hinge"
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {
        "leaderboard.csv",
        "leaderboard.md",
        "metric_vs_beta.png",
        "best_config.yaml",
    } | EXPECTED_PNGS <= stored
