"""What a trial's MLflow run shows beside its metrics: the eval generations as a table, the data it
trained on as dataset inputs, and system metrics while it trains.

- Generations: `trainer.generation` writes `generations.json` into the output dir; it is logged with
  `MlflowClient.log_table` as `eval_generations.json`, so the MLflow UI's artifact view shows a trial's
  policy and reference answers, and the "Evaluation"/artifact comparison puts trials side by side.
- Dataset inputs: each dataset of the config becomes an MLflow dataset input (name, digest = the
  tokenized data's fingerprint, source = the data file), context `training` or `eval`; the runs table's
  Dataset column then shows which data each trial used.
- System metrics: MLflow's own `SystemMetricsMonitor` (CPU, memory, disk, network, GPU when present)
  for the run, sampled every `SYSTEM_METRICS_INTERVAL_S` by rank 0. It talks to the store directly,
  not through the spool: during an outage those samples are lost, the training metrics are not.

The table and inputs travel through the spool as one `outputs` item (`outputs_item`), delivered by
`deliver`; delivering it twice logs nothing twice.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

logger = logging.getLogger("prefsweep.mlflow")

GENERATION_TABLE = "eval_generations.json"
SYSTEM_METRICS_INTERVAL_S = 5.0
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the tag the runs table reads ("training", "eval")
DIGEST_CHARS = 16


def _dataset_records(config: dict, fingerprint: str | None) -> list[dict]:
    """One record per dataset name of the config: name, context, source file URI, digest."""
    from trainer.data.dataset_info import get_dataset_attr
    from trainer.data.pipeline import dataset_names

    records = []
    digest = (fingerprint or "unknown")[:DIGEST_CHARS]
    dataset_dir = config.get("dataset_dir") or "data"
    for key, context in (("dataset", "training"), ("eval_dataset", "eval")):
        for name in dataset_names(config.get(key)):
            try:
                attr = get_dataset_attr(name, dataset_dir)
                source = Path(attr.path).resolve().as_uri()
            except Exception as err:  # noqa: BLE001 - the input is a label; a missing file must not fail the run
                logger.debug("dataset %s: no source file (%s)", name, err)
                source = Path(dataset_dir, name).resolve().as_uri()
            records.append({"name": name, "context": context, "source": source, "digest": digest})
    return records


def outputs_item(output_dir: Path, config: dict, fingerprint: str | None) -> dict:
    """The spool record: the generations file (relative to the output dir) when there is one, and the
    dataset inputs."""
    from trainer.generation import GENERATIONS_NAME

    table = GENERATIONS_NAME if (Path(output_dir) / GENERATIONS_NAME).is_file() else None
    return {"op": "outputs", "table": table, "datasets": _dataset_records(config, fingerprint)}


def dataset_input(record: dict):
    """An `mlflow.entities.DatasetInput` for one `_dataset_records` record (a metadata-only dataset)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways: LocalArtifactDatasetSource, ..." (same class)
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(record["source"])
    dataset = MetaDataset(source=source, name=record["name"], digest=record["digest"])
    return DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT_TAG, record["context"])])


def deliver(client, run_id: str, root: Path, item: dict) -> None:
    """Log the table (unless the run already has it) and the dataset inputs (the store keeps one of each)."""
    if item.get("datasets"):
        client.log_inputs(run_id, datasets=[dataset_input(r) for r in item["datasets"]])
    if item.get("table") and (root / item["table"]).is_file():
        logged = {f.path for f in client.list_artifacts(run_id)}
        if GENERATION_TABLE not in logged:
            record = json.loads((root / item["table"]).read_text(encoding="utf-8"))
            client.log_table(run_id, data=record["table"], artifact_file=GENERATION_TABLE)


def start_system_metrics(tracking_uri: str, run_id: str | None):
    """MLflow's system metrics monitor for `run_id`, started; None when it cannot run (no run yet,
    psutil missing)."""
    if not run_id:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - optional: training goes on without it
        logger.warning("MLflow system metrics are off for run %s: %s", run_id, err)
        return None


def stop_system_metrics(monitor) -> None:
    if monitor is not None:
        try:
            monitor.finish()
        except Exception as err:  # noqa: BLE001
            logger.debug("system metrics monitor did not stop cleanly: %s", err)
