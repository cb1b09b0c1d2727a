"""Fixtures shared across test modules: the tiny offline model, small demo datasets and a private local Ray.

The model directory and the datasets are built once per session and only read by the tests (a test that
edits weights copies the model first).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from pathlib import Path

import pytest

from trainer.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "dpo_en_demo.json"
PAIRS_INFO = {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}


def _ray_module(item: pytest.Item | None) -> bool:
    """Whether `item` belongs to a module that has a test using the shared local Ray."""
    return item is not None and getattr(item, "module", None) in RAY_MODULES


RAY_MODULES: set = set()


def pytest_collection_modifyitems(config, items):
    # The modules that use `local_ray` run one after another (each module's tests kept together and in
    # order), where the first of them was, so one Ray serves them all (Python's sort is stable).
    RAY_MODULES.update(item.module for item in items if _uses_local_ray(item))
    ray_items = [item for item in items if _ray_module(item)]
    if ray_items:
        first = items.index(ray_items[0])
        # a module wanting a fresh Ray goes first, so the Ray started for it serves the others: one start
        ray_items.sort(key=lambda item: not getattr(item.module, "LOCAL_RAY_FRESH", False))
        rest = [item for item in items if not _ray_module(item)]
        items[:] = rest[:first] + ray_items + rest[first:]


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


class SharedLocalRay:
    """One private local Ray (token auth, a token file of its own) for consecutive modules that use
    `local_ray`: starting one costs 10-20 s of a 2-core machine, and five modules need one. It is shut down
    as soon as the next test comes from a module that does not use it (`pytest_runtest_teardown` below), so
    no other test runs beside it; `pytest_collection_modifyitems` puts those modules next to each other."""

    def __init__(self):
        self.ray = None
        self.saved_env: dict[str, str | None] = {}

    def start(self, token_dir: Path, fresh: bool = False):
        """fresh: a new Ray even if one runs (a module setting `LOCAL_RAY_FRESH = True`)."""
        if self.ray is not None:
            if not fresh and self._all_cpus_free():
                return self.ray
            if not fresh:  # a module before left CPUs held: a fresh Ray, as before
                warnings.warn(f"the shared local Ray still had CPUs held ({self.ray.available_resources()}); "
                              "starting a fresh one", stacklevel=1)
            self.stop()
        import ray

        from rayjobs.local_ray import ensure_ray

        token = token_dir / "token"
        token.write_text(secrets.token_hex(32))
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ADDRESS": None}
        self.saved_env = {key: os.environ.get(key) for key in env}
        _set_env(env)
        assert not ray.is_initialized()
        try:
            assert ensure_ray(num_cpus=2) == "local"
        except BaseException:
            _set_env(self.saved_env)
            raise
        self.ray = ray
        return ray

    def _all_cpus_free(self, wait_s: float = 30) -> bool:
        """A new module gets the Ray as a fresh one is: every CPU free (no actor or placement group of the
        module before holds one; Ray releases them a moment after a run ends)."""
        deadline = time.monotonic() + wait_s
        while self.ray.available_resources().get("CPU", 0) < self.ray.cluster_resources().get("CPU", 0):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        if self.ray is None:
            return
        try:
            self.ray.shutdown()
        finally:
            self.ray = None
            _set_env(self.saved_env)


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


SHARED_RAY = SharedLocalRay()


def _uses_local_ray(item: pytest.Item | None) -> bool:
    return item is not None and "local_ray" in getattr(item, "fixturenames", ())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        if SHARED_RAY.ray is not None and not _ray_module(nextitem):
            SHARED_RAY.stop()


def pytest_sessionfinish(session):
    SHARED_RAY.stop()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory, request):
    """A private local Ray, token auth on with a token file of its own; shared by consecutive modules
    (`SharedLocalRay`)."""
    return SHARED_RAY.start(tmp_path_factory.mktemp("auth"), fresh=getattr(request.module, "LOCAL_RAY_FRESH", False))


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
