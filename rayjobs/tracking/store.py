"""Where MLflow runs go, and finding them there.

`MLFLOW_TRACKING_URI` (default `sqlite:///<absolute cwd>/mlflow.db`; absolute because Ray workers run in
other working directories) and `MLFLOW_EXPERIMENT_NAME` (default "prefsweep"). The driver calls
`ensure_experiment()` once and hands `tracking_uri()` and the experiment id to the workers; workers never
resolve the store themselves (unless the driver found it down: then rank 0 resolves the experiment by
name when the store is back).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rayjobs.tracking.client import fail_fast_http, is_permanent
from rayjobs.tracking.tags import TAG_KIND, TAG_SWEEP_ID

DEFAULT_EXPERIMENT_NAME = "prefsweep"
# Without this tag MLflow 3's UI opens an experiment in its GenAI view; with it, the training-runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

logger = logging.getLogger("prefsweep.mlflow")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, with relative sqlite / file paths made absolute; default `<cwd>/mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if uri.startswith("file:") or "://" not in uri:
        path = uri[len("file://") :] if uri.startswith("file://") else uri.removeprefix("file:")
        return Path(path).resolve().as_uri()
    return uri


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT_NAME


def _local_artifact_location(uri: str, name: str) -> str | None:
    """A SQLite store's artifacts live next to the database file (`mlruns/<experiment>/<run id>/`), not
    under whichever working directory first opened it (MLflow's default)."""
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        if db.startswith("/"):
            return str(Path(db).parent / "mlruns" / (re.sub(r"[^\w.-]", "_", name).lstrip(".") or "_"))
    return None  # servers choose their own artifact store (`--artifacts-destination`)


def ensure_experiment(name: str | None = None, uri: str | None = None) -> str:
    """Id of experiment `name` (default `experiment_name()`), created with the experiment-kind tag if missing.

    Called once, by the driver, before any worker starts, so that a fresh SQLite file is created and
    migrated by one process. An existing experiment that lacks the kind tag gets it; one that has
    another kind keeps it (a user's choice). A deleted experiment of that name is restored. `uri`: the
    store (default `tracking_uri()`).
    """
    name = name or experiment_name()
    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=_local_artifact_location(uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as err:  # another driver created it a moment ago
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise err
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def resolve_experiment(experiment_id: str | None, name: str | None = None, uri: str | None = None) -> str:
    """`experiment_id` when the driver resolved one, else the experiment by name (created if missing)."""
    return experiment_id or ensure_experiment(name, uri=uri)


def try_ensure_experiment(name: str | None = None) -> str | None:
    """`ensure_experiment()` for a driver that must not wait on a dead server: None (with a warning) when
    the store is unreachable; pass it on with `experiment_name` and rank 0 resolves it when the store is back."""
    fail_fast_http(tracking_uri())
    try:
        return ensure_experiment(name)
    except MlflowException as err:
        if is_permanent(err):
            raise
        logger.warning("MLflow at %s is unreachable (%s); the experiment is resolved when it is back",
                       tracking_uri(), str(err).splitlines()[0] if str(err) else err)  # fmt: skip
        return None


def ui_command() -> str:
    """The command that opens this store in the MLflow UI (or the server's address for http stores)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def find_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, run_name: str) -> str | None:
    """The run named `run_name` under `parent_run_id`, if any."""
    if "'" in run_name:
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.run_name = '{run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    """Every run of the experiment matching `filter_string` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def find_sweep_parent(client: MlflowClient, experiment_id: str, sweep_id: str) -> str | None:
    """The parent run of sweep `sweep_id`, if it has been created."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_KIND}` = 'sweep'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def link_sweep_children(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep_id: str) -> int:
    """Make every trial run of sweep `sweep_id` a child of `parent_run_id` (trials created while the
    parent run did not exist yet carry only the sweep's id); returns how many were linked now."""
    trials = search_all(
        client, experiment_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_KIND}` = 'trial'"
    )
    linked = 0
    for run in trials:
        if run.data.tags.get(MLFLOW_PARENT_RUN_ID) != parent_run_id:
            client.set_tag(run.info.run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)
            linked += 1
    return linked
