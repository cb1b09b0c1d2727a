"""A sweep's parent MLflow run: started with the spec, finished with the leaderboard, the comparison plots
and the best trial's config; its trials are the child runs `rayjobs.tracking.MlflowLoggingCallback` opens."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rayjobs.tracking import leaderboard, report_plots
from rayjobs.tracking.leaderboard import TrialSummary
from rayjobs.tracking.params import dump_yaml, flatten_params, param_key
from rayjobs.tracking.store import tracking_uri
from rayjobs.tracking.tags import TAG_KIND, run_context_tags


def start_sweep_parent(spec: dict, spec_path: str | None, *, experiment_id: str, run_name: str,
                       tags: dict[str, str] | None = None) -> str:
    """Create the sweep's parent run (left RUNNING): the spec as params and as `sweep_spec.yaml`; `tags`
    added to the context tags."""
    client = MlflowClient(tracking_uri())
    tags = {**run_context_tags(), TAG_KIND: "sweep", **(tags or {})}
    if spec_path:
        tags["prefsweep.sweep_spec_path"] = str(spec_path)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(spec).items()])
    client.log_text(run_id, dump_yaml(spec), "sweep_spec.yaml")
    return run_id


def _child_runs(client: MlflowClient, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def finish_sweep_parent(
    parent_run_id: str,
    trials: list[TrialSummary],
    *,
    metric: str,
    mode: str,
    scope: str = "last",
    status: str = "FINISHED",
) -> str:
    """Log the leaderboard (CSV, Markdown), comparison plots and `best_config.yaml` on the parent, end it,
    and return the leaderboard as terminal text.

    Trials are ranked by their final metric (`scope="last"`, Ray Tune's default) or their best one
    (`scope="best"`). A trial without `run_id` is matched to its child run by name; one without a curve
    gets the metric's history from MLflow. Children still RUNNING (stopped by a scheduler, or their
    workers died) are marked KILLED.
    """
    leaderboard.check_mode(mode, scope)
    client = MlflowClient(tracking_uri())
    children = {r.info.run_name: r for r in _child_runs(client, parent_run_id)}
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
        metrics.append(
            Metric(param_key(f"best/{metric}"), leaderboard.score(best, scope), int(time.time() * 1000), 0)
        )
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)
    client.set_terminated(parent_run_id, status=status)
    return leaderboard.to_text(ranked, metric, mode=mode, scope=scope)
