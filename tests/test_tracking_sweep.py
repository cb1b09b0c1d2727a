"""A sweep in MLflow against a real SQLite store: the parent run started and finished the way the sweep driver
does it (`rayjobs.sweep_parent.SweepParent`, through its spool), trials hung under it as child runs through
the Hugging Face callback hooks, then everything read back with `MlflowClient`: the leaderboard ranks the
right winner, `best_config.yaml` is its config, and a restarted trial keeps one child run."""

from __future__ import annotations

import csv
import io

import yaml
from PIL import Image

from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.leaderboard import TrialSummary
from tests.tracking_helpers import METRIC, SPEC, download_text, make_config, run_trial, start_parent


def test_sweep_parent_children_leaderboard_and_best_config(store, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    sweep = start_parent(tmp_path / "sweep", "demo-sweep", experiment_id=exp_id, spec_path="sweeps/demo.yaml")
    parent = sweep.run_id
    # eval_rewards/accuracies is logged at steps 2 and 4: (acc[1], acc[3]) -> final = acc[3], best = max
    plan = {
        "t0_sigmoid_b0.1": (make_config("sigmoid", 0.1), [0.25, 0.5, 0.5, 0.5]),  # final 0.5, best 0.5
        "t1_ipo_b0.5": (make_config("ipo", 0.5), [0.5, 1.0, 0.75, 0.75]),  # final 0.75, best 1.0
        "t2_simpo_b0.5": (
            make_config("simpo", 0.5, simpo_gamma=0.3),
            [0.5, 0.25, 1.0, 0.25],
        ),  # 0.25, best 0.25
    }
    runs = {}
    for name, (config, accuracies) in plan.items():
        cb = run_trial(
            tmp_path / name,
            experiment_id=exp_id,
            run_name=name,
            parent_run_id=parent,
            config=config,
            accuracies=accuracies,
            finalize=name != "t2_simpo_b0.5",  # stopped early by the scheduler: never finalized
        )
        runs[name] = cb.run_id
    # The driver knows final/best from Tune for two trials; the third is completed from MLflow.
    trials = [
        TrialSummary("t0_sigmoid_b0.1", "sigmoid", 0.1, None, 0.0, 0.5, 0.5, runs["t0_sigmoid_b0.1"],
                     plan["t0_sigmoid_b0.1"][0], [(2, 0.5), (4, 0.5)]),
        TrialSummary("t1_ipo_b0.5", "ipo", 0.5, None, 0.0, 0.75, 1.0, runs["t1_ipo_b0.5"],
                     plan["t1_ipo_b0.5"][0], [(2, 1.0), (4, 0.75)]),
        TrialSummary("t2_simpo_b0.5", "simpo", 0.5, 0.3, 0.0, None, None, None, plan["t2_simpo_b0.5"][0], []),
    ]  # fmt: skip
    text = sweep.finish(trials, metric=METRIC, mode="max")
    assert sweep.delivered

    parent_run = store.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent_run.data.tags
    assert parent_run.data.tags["prefsweep.kind"] == "sweep"
    assert parent_run.data.tags["prefsweep.best_trial"] == "t1_ipo_b0.5"
    assert parent_run.data.params["search_space.pref_beta.grid"] == "[0.1, 0.5]"
    assert parent_run.data.params["overrides.hub_token"] == "***"
    assert parent_run.data.metrics[f"best/{METRIC}"] == 0.75
    children = store.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {c.info.run_name: c.info.run_id for c in children} == runs
    statuses = {c.info.run_name: c.info.status for c in children}
    assert statuses == {"t0_sigmoid_b0.1": "FINISHED", "t1_ipo_b0.5": "FINISHED", "t2_simpo_b0.5": "KILLED"}
    assert {c.info.run_name: c.data.tags["prefsweep.loss"] for c in children} == {
        "t0_sigmoid_b0.1": "sigmoid",
        "t1_ipo_b0.5": "ipo",
        "t2_simpo_b0.5": "simpo",
    }

    # ranked by final value, max first: ipo 0.75 > sigmoid 0.5 > simpo 0.25 (simpo's from MLflow history)
    expected = ["t1_ipo_b0.5", "t0_sigmoid_b0.1", "t2_simpo_b0.5"]
    rows = list(csv.DictReader(io.StringIO(download_text(store, parent, "leaderboard.csv", tmp_path))))
    assert [r["trial"] for r in rows] == expected
    assert [float(r[f"final {METRIC}"]) for r in rows] == [0.75, 0.5, 0.25]
    assert [float(r[f"best {METRIC}"]) for r in rows] == [1.0, 0.5, 0.25]
    assert rows[2]["gamma"] == "0.3" and rows[2]["run_id"] == runs["t2_simpo_b0.5"]
    markdown = download_text(store, parent, "leaderboard.md", tmp_path)
    assert [line.split("|")[2].strip() for line in markdown.splitlines() if line.startswith("| ")][
        1:
    ] == expected
    assert [line.split()[1] for line in text.splitlines()[3:]] == expected
    assert text.splitlines()[0].startswith(f"Leaderboard: {METRIC} (max")

    best = yaml.safe_load(download_text(store, parent, "best_config.yaml", tmp_path))
    assert best == {**plan["t1_ipo_b0.5"][0], "hub_token": "***"}
    spec = yaml.safe_load(download_text(store, parent, "sweep_spec.yaml", tmp_path))
    assert spec == {**SPEC, "overrides": {"hub_token": "***"}}
    for png in ("metric_vs_beta.png", "metric_curves.png"):
        with Image.open(store.download_artifacts(parent, png, str(tmp_path))) as image:
            image.verify()
            assert image.format == "PNG"


def test_a_restarted_trial_reuses_its_child_run(store, tmp_path):
    exp_id = mlflow_store.ensure_experiment()
    sweep = start_parent(tmp_path / "sweep", "restarts", experiment_id=exp_id)
    parent = sweep.run_id
    first = run_trial(
        tmp_path / "a", experiment_id=exp_id, run_name="t0", parent_run_id=parent, config=make_config(),
        accuracies=[0.5, 0.5], finalize=False,
    )  # fmt: skip
    second = run_trial(
        tmp_path / "a", experiment_id=exp_id, run_name="t0", parent_run_id=parent, config=make_config(),
        accuracies=[0.5, 0.5, 1.0, 1.0],
    )  # fmt: skip
    assert second.run_id == first.run_id
    assert len(store.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")) == 1
    run = store.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    # the restart re-logged steps 1-2 (accuracies 0.5 both times): kept once; steps 3-4 are new
    for key in run.data.metrics:
        steps = [m.step for m in store.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == sorted(set(steps)), (key, steps)
    assert sorted((m.step, m.value) for m in store.get_metric_history(run.info.run_id, "rewards/accuracies")) == [
        (1, 0.5), (2, 0.5), (3, 1.0), (4, 1.0)]
    assert [m.step for m in store.get_metric_history(run.info.run_id, "eval_loss")] == [2, 4]
    sweep.finish([], metric="rewards/accuracies", mode="max")  # ends its sender thread
    assert store.get_run(parent).info.status == "FINISHED"
