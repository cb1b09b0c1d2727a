"""Fixtures shared across test modules: the tiny offline model, small demo datasets and a private local Ray.

The model directory and the datasets are built once per session and only read by the tests (a test that
edits weights copies the model first).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from trainer.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "dpo_en_demo.json"
PAIRS_INFO = {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model and its byte-level BPE (vocab 512), trained on the demo pairs."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [DEMO], vocab_size=512, seed=0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """8 demo pairs (dpo, dataset `pairs`) and the same 8 pairs split into 16 labelled examples (kto)."""
    root = tmp_path_factory.mktemp("data")
    pairs = json.loads(DEMO.read_text())[:8]
    (root / "pairs.json").write_text(json.dumps(pairs))
    kto_rows = []
    for pair in pairs:
        prompt = [{"role": "user", "content": m["value"]} for m in pair["conversations"]]
        for key, label in (("chosen", True), ("rejected", False)):
            kto_rows.append({"messages": prompt + [{"role": "assistant", "content": pair[key]["value"]}], "label": label})
    (root / "kto.jsonl").write_text("\n".join(json.dumps(r) for r in kto_rows))
    info = {
        "pairs": PAIRS_INFO,
        "kto": {"file_name": "kto.jsonl", "formatting": "sharegpt",
                "columns": {"messages": "messages", "kto_tag": "label"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    }
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


@pytest.fixture(scope="session")
def tiny(tiny_model, tmp_path_factory) -> dict:
    """{"model": the tiny model, "data": a dataset dir holding the first 32 demo pairs as `pairs`}."""
    data = tmp_path_factory.mktemp("pairs32")
    (data / "pairs.json").write_text(json.dumps(json.loads(DEMO.read_text())[:32]))
    (data / "dataset_info.json").write_text(json.dumps({"pairs": PAIRS_INFO}))
    return {"model": tiny_model, "data": data}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A private local Ray for one module, token auth on with a token file of its own."""
    import ray

    from rayjobs.local_ray import ensure_ray

    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_ADDRESS", raising=False)
        assert not ray.is_initialized()
        assert ensure_ray(num_cpus=2) == "local"
        try:
            yield ray
        finally:
            ray.shutdown()


# ------------------------------------------------------------------- MLflow tracking tests (SQLite store)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory) -> Path:
    """One SQLite store per module: creating and migrating a fresh database takes seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store")
    MlflowClient(f"sqlite:///{path}/mlflow.db").search_experiments()
    return path


@pytest.fixture
def store(db_dir, tmp_path, monkeypatch, request):
    """The module's store with an experiment name of this test's own; cwd moved to tmp so nothing lands
    in the repository."""
    from mlflow import MlflowClient

    from rayjobs.tracking import store as mlflow_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db_dir}/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"prefsweep-{request.node.name}")
    return MlflowClient(mlflow_store.tracking_uri())
