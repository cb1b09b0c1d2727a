"""A sweep's parent MLflow run: started with the spec, finished with the leaderboard, the comparison plots
and the best trial's config; its trials are the child runs `rayjobs.tracking.MlflowLoggingCallback` opens.

The sweep driver writes it through a spool (`rayjobs.sweep_parent`), whose items are `parent_items` at the
start and `leaderboard_item` at the end; `deliver_leaderboard` is what the spool's sender runs for the
latter, once the store answers, and `log_leaderboard` is what it writes.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rayjobs.tracking import leaderboard, report_plots
from rayjobs.tracking.leaderboard import TrialSummary
from rayjobs.tracking.params import dump_yaml, flatten_params, param_key
from rayjobs.tracking.store import link_sweep_children, search_all
from rayjobs.tracking.tags import TAG_KIND, run_context_tags

SPEC_ARTIFACT = "sweep_spec.yaml"


def parent_tags(spec_path: str | None, tags: dict[str, str] | None = None) -> dict[str, str]:
    tags = {**run_context_tags(), TAG_KIND: "sweep", **(tags or {})}
    if spec_path:
        tags["prefsweep.sweep_spec_path"] = str(spec_path)
    return tags


def _child_runs(client: MlflowClient, parent_run_id: str, experiment_id: str) -> list:
    return search_all(client, experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def log_leaderboard(
    client: MlflowClient,
    parent_run_id: str,
    trials: list[TrialSummary],
    *,
    metric: str,
    mode: str,
    scope: str = "last",
    sweep_id: str | None = None,
    timestamp_ms: int | None = None,
) -> str:
    """Log the leaderboard, plots, `best_config.yaml`, the best metric and summary tags on the parent; return
    the leaderboard as terminal text.

    Trials are ranked by their final metric (`scope="last"`, Ray Tune's default) or their best one
    (`scope="best"`). A trial without `run_id` is matched to its child run by name; one without a curve
    gets the metric's history from MLflow. Children still RUNNING (stopped by a scheduler, or their
    workers died) are marked KILLED. `sweep_id`: trials that carry it but not the parent's id yet (created
    while the parent run did not exist) are made its children first. `timestamp_ms`: of the best-metric
    point (a spooled item fixes it, so a resend is the same point).
    """
    leaderboard.check_mode(mode, scope)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    if sweep_id:
        link_sweep_children(client, experiment_id, parent_run_id, sweep_id)
    children = {r.info.run_name: r for r in _child_runs(client, parent_run_id, experiment_id)}
    filled = []
    for t in trials:
        run = children.get(t.trial)
        run_id = t.run_id or (run.info.run_id if run else None)
        curve = list(t.curve)
        if not curve and run_id:
            curve = [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]
        filled.append(leaderboard.complete(t, run_id=run_id, curve=curve, mode=mode))
    for run in children.values():
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")

    ranked = leaderboard.rank(filled, mode=mode, scope=scope)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "leaderboard.csv").write_text(leaderboard.to_csv(ranked, metric))
        (out / "leaderboard.md").write_text(leaderboard.to_markdown(ranked, metric, mode=mode, scope=scope))
        report_plots.metric_vs_beta(ranked, metric, scope=scope).savefig(out / "metric_vs_beta.png", dpi=100)
        report_plots.metric_curves(ranked, metric).savefig(out / "metric_curves.png", dpi=100)
        best = ranked[0] if ranked and leaderboard.score(ranked[0], scope) is not None else None
        if best is not None:
            (out / "best_config.yaml").write_text(dump_yaml(best.config))
        client.log_artifacts(parent_run_id, str(out))
    tags = [
        RunTag("prefsweep.metric", metric),
        RunTag("prefsweep.mode", mode),
        RunTag("prefsweep.num_trials", str(len(trials))),
    ]
    metrics = []
    if best is not None:
        tags += [
            RunTag("prefsweep.best_trial", best.trial),
            RunTag("prefsweep.best_run_id", best.run_id or ""),
        ]
        when = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        metrics.append(Metric(param_key(f"best/{metric}"), leaderboard.score(best, scope), when, 0))
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)
    return leaderboard.to_text(ranked, metric, mode=mode, scope=scope)


# ------------------------------------------------------------------------------------ spooled items


def parent_items(spec: dict) -> tuple[dict, dict]:
    """(params, the artifacts item) of a parent run's spool: the spec as params and as `sweep_spec.yaml`."""
    return flatten_params(spec), {"op": "artifacts", "files": [], "texts": {SPEC_ARTIFACT: dump_yaml(spec)}}


def leaderboard_item(trials: list[TrialSummary], *, metric: str, mode: str, scope: str = "last",
                     sweep_id: str | None = None) -> dict:
    """The spool item `deliver_leaderboard` turns into `log_leaderboard` (ranked when the store answers: the
    curves and the children's run ids come from the store)."""
    leaderboard.check_mode(mode, scope)
    rows = [json.loads(json.dumps(dataclasses.asdict(t), default=str)) for t in trials]
    return {"op": "leaderboard", "trials": rows, "metric": metric, "mode": mode, "scope": scope,
            "sweep_id": sweep_id, "timestamp_ms": int(time.time() * 1000)}  # fmt: skip


def local_text(item: dict) -> str:
    """The leaderboard of a `leaderboard_item` from what the driver has (final values, no curves): what the
    driver prints when the store did not answer in time."""
    trials = [leaderboard.complete(TrialSummary(**row), run_id=row["run_id"], curve=row["curve"], mode=item["mode"])
              for row in item["trials"]]  # fmt: skip
    ranked = leaderboard.rank(trials, mode=item["mode"], scope=item["scope"])
    return leaderboard.to_text(ranked, item["metric"], mode=item["mode"], scope=item["scope"])


def deliver_leaderboard(client: MlflowClient, run_id: str, item: dict) -> str:
    trials = [TrialSummary(**row) for row in item["trials"]]
    return log_leaderboard(client, run_id, trials, metric=item["metric"], mode=item["mode"], scope=item["scope"],
                           sweep_id=item.get("sweep_id"), timestamp_ms=item["timestamp_ms"])  # fmt: skip
