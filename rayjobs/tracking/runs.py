"""The one place a run is opened: found again (by id, by a marker tag, as a parent's child of that name) or
created, set RUNNING, then given its params (a run keeps its first values) and tags.

The driver opens a run synchronously (`MlflowLoggingCallback.ensure_run`); rank 0 opens it through its spool
(`rayjobs.tracking.spool.Delivery`), which adds a marker tag so that a create whose answer was lost is found
instead of repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException

from rayjobs.tracking.store import find_child_run

logger = logging.getLogger("prefsweep.mlflow")


def _direct(call, *args, **kwargs):
    return call(*args, **kwargs)


def open_run(
    client: MlflowClient,
    *,
    experiment_id: Callable[[], str],
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    run_id: str | None = None,
    parent_run_id: str | None = None,
    marker: tuple[str, str] | None = None,
    call: Callable = _direct,
) -> tuple[str, bool]:
    """Find or create the run and log its params and tags; return (run id, created).

    `run_id`: a run known to be this one (if the store lost it, the run is found or created again).
    `marker`: a (tag, value) this run carries from its creation, searched first. `parent_run_id`: a
    sweep's parent; its child named `run_name` is this run. `experiment_id`: called only when needed (it
    may have to create the experiment). `call`: wraps each write (e.g. `client.with_retries`).
    """

    def find() -> str | None:
        experiment = experiment_id()
        if marker is not None:
            tag, value = marker
            runs = client.search_runs([experiment], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
            if runs:
                return runs[0].info.run_id
        if parent_run_id:
            return find_child_run(client, experiment, parent_run_id, run_name)
        return None

    run = None
    run_id = run_id or find()
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            logger.warning("MLflow: run %s is not in %s; creating a new one", run_id, client.tracking_uri)
            run_id = find()
            run = client.get_run(run_id) if run_id else None
    created = run is None
    if created:
        create_tags = {**tags, **dict([marker])} if marker else tags
        run = call(client.create_run, experiment_id(), run_name=run_name, tags=create_tags)
        run_id = run.info.run_id
    else:
        call(client.update_run, run_id, status="RUNNING")
    logged = run.data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
    if changed:
        logger.warning("MLflow run %s keeps its first values of params %s", run_id, changed)
    call(
        client.log_batch,
        run_id,
        params=[Param(k, v) for k, v in params.items() if k not in logged],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    return run_id, created
