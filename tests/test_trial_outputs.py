"""What a trial shows in MLflow beside its metrics, read back from a SQLite store after one tiny in-process
run: the eval generations as a table (and the metrics that follow from it), the data as a dataset input,
system metrics, and the best trial's model registered under the sweep's name. Plus the leaderboard's
reward-accuracy and win-rate columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rayjobs.tracking import best_model, leaderboard
from rayjobs.tracking import store as mlflow_store
from rayjobs.tracking.leaderboard import TrialSummary
from rayjobs.tracking.trial_outputs import GENERATION_TABLE
from rayjobs.train import run as train_run
from trainer.generation import GENERATIONS_NAME, win_rate


@pytest.fixture(scope="module")
def reward_model_dir(tiny, tmp_path_factory) -> Path:
    """A one-logit classifier on the tiny model's weights (untrained head: the scores need not be good,
    only the same ones read back)."""
    out = tmp_path_factory.mktemp("rm") / "reward"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny["model"], num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tracked_run(tiny, reward_model_dir, tmp_path_factory):
    """One 2-step run with eval_generate: 2 judged by the reward model, tracked in a fresh SQLite store."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "trial-outputs")
        # a sample every 0.1 s: a 2-step run on a quiet machine ends within the first second
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
        config = {
            "model_name_or_path": str(tiny["model"]), "stage": "dpo", "do_train": True, "finetuning_type": "full",
            "dataset": "pairs", "dataset_dir": str(tiny["data"]), "template": "default", "cutoff_len": 128,
            "max_samples": 12, "val_size": 4, "per_device_train_batch_size": 2, "max_steps": 2,
            "learning_rate": 5e-3, "output_dir": str(root / "out" / "trial_a"), "report_to": "none",
            "save_strategy": "no", "use_ray": False, "eval_generate": 2, "eval_generate_max_new_tokens": 6,
            "eval_reward_model": str(reward_model_dir), "seed": 0,
        }
        metrics = train_run(config, track=True)
        client = MlflowClient(mlflow_store.tracking_uri())
        experiment = client.get_experiment_by_name("trial-outputs")
        (run,) = client.search_runs([experiment.experiment_id])
        yield {"root": root, "metrics": metrics, "client": client, "run": run,
               "output_dir": root / "out" / "trial_a", "uri": mlflow_store.tracking_uri()}


def test_generation_table_is_logged_and_its_metrics_follow_from_it(tracked_run, tmp_path):
    client, run = tracked_run["client"], tracked_run["run"]
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": GENERATION_TABLE, "type": "table"}]
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, GENERATION_TABLE, str(tmp_path))).read_text())
    table = dict(zip(logged["columns"], zip(*logged["data"])))
    written = json.loads((tracked_run["output_dir"] / GENERATIONS_NAME).read_text())["table"]
    assert list(table) == list(written)  # index, prompt, policy, reference, *_tokens, *_reward
    for name, column in written.items():  # pandas writes floats with 10 significant digits
        assert list(table[name]) == (pytest.approx(column, rel=1e-9) if name.endswith("_reward") else column), name
    assert len(table["policy"]) == 2 and all(0 <= n <= 6 for n in table["policy_tokens"])
    metrics = run.data.metrics
    assert metrics["eval_reward/win_rate_vs_ref"] == pytest.approx(
        win_rate(list(table["policy_reward"]), list(table["reference_reward"])))
    assert metrics["eval_reward/mean"] == pytest.approx(sum(table["policy_reward"]) / 2)
    assert metrics["eval_generate/mean_length"] == pytest.approx(sum(table["policy_tokens"]) / 2)
    assert tracked_run["metrics"]["eval_reward/win_rate_vs_ref"] == metrics["eval_reward/win_rate_vs_ref"]


def test_data_is_a_dataset_input_and_system_metrics_are_on(tracked_run):
    run = tracked_run["run"]
    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.name == "pairs"
    assert data_input.dataset.digest == run.data.tags["prefsweep.dataset_fingerprint"][:16]
    assert json.loads(data_input.dataset.source)["uri"] == (Path(tracked_run["run"].data.params["dataset_dir"])
                                                            / "pairs.json").resolve().as_uri()
    assert {t.key: t.value for t in data_input.tags} == {"mlflow.data.context": "training"}
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)


def test_best_trial_model_is_registered_under_the_sweep_name(tracked_run, tmp_path):
    import mlflow.artifacts
    import mlflow.pyfunc

    client, trial = tracked_run["client"], tracked_run["run"]
    parent = client.create_run(trial.info.experiment_id, run_name="sweep", tags={
        "prefsweep.best_run_id": trial.info.run_id, "prefsweep.best_trial": "trial_a"})
    version = best_model.register_best(parent.info.run_id, "demo-test", tracked_run["output_dir"].parent,
                                       tracked_run["uri"])
    assert str(version.version) == "1" and version.run_id == trial.info.run_id
    assert str(client.get_registered_model("demo-test").latest_versions[0].version) == "1"
    assert client.get_run(parent.info.run_id).data.tags["prefsweep.registered_model"] == "demo-test/1"
    path = mlflow.artifacts.download_artifacts("models:/demo-test/1", dst_path=str(tmp_path),
                                               tracking_uri=tracked_run["uri"])
    registered = AutoModelForCausalLM.from_pretrained(path)
    trained = AutoModelForCausalLM.from_pretrained(tracked_run["output_dir"])
    for (name, a), (_, b) in zip(registered.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(path).encode("Human: hi") == AutoTokenizer.from_pretrained(
        tracked_run["output_dir"]).encode("Human: hi")
    # the pyfunc flavor answers as the trained model does, greedily
    tokenizer = AutoTokenizer.from_pretrained(tracked_run["output_dir"])
    ids = torch.tensor([tokenizer.encode("Human: hi\nAssistant:")])
    greedy = trained.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5,
                              eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                              pad_token_id=tokenizer.pad_token_id)
    pyfunc = mlflow.pyfunc.load_model("models:/demo-test/1")
    assert pyfunc.predict(["Human: hi\nAssistant:"], params={"max_new_tokens": 5}) == [
        tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)]


def test_no_best_trial_registers_nothing(tracked_run, caplog):
    client = tracked_run["client"]
    parent = client.create_run(tracked_run["run"].info.experiment_id, run_name="empty-sweep")
    assert best_model.register_best(parent.info.run_id, "never", tracked_run["root"], tracked_run["uri"]) is None
    assert "no best trial" in caplog.text


def test_leaderboard_shows_reward_accuracy_and_win_rate():
    trials = [
        TrialSummary("t1", "ipo", 0.5, None, 0.0, final=0.7, best=0.8, extras={
            "eval_rewards/accuracies": 0.75, "eval_reward/win_rate_vs_ref": 0.25}),
        TrialSummary("t0", "sigmoid", 0.1, None, 0.0, final=0.9, best=0.9, extras={"eval_rewards/accuracies": 0.5}),
    ]
    ranked = leaderboard.rank(trials, mode="max")
    text = leaderboard.to_text(ranked, "eval_reward/mean", mode="max").splitlines()
    assert text[1].split() == ["rank", "trial", "loss", "beta", "gamma", "ftx", "final", "best",
                               "eval_rewards/accuracies", "eval_reward/win_rate_vs_ref"]
    assert text[3].split()[-2:] == ["0.5000", "-"] and text[4].split()[-2:] == ["0.7500", "0.2500"]
    csv_rows = leaderboard.to_csv(ranked, "eval_reward/mean").splitlines()
    assert csv_rows[0].endswith(",eval_rewards/accuracies,eval_reward/win_rate_vs_ref,run_id")
    assert csv_rows[2] == "2,t1,ipo,0.5,,0.0,0.7,0.8,0.75,0.25,"


def test_mlflow_ui_shows_the_run_its_generation_table_and_the_registered_model(tracked_run, tmp_path):
    """Headless Chromium over `mlflow server` on this store (`benchmarks/mlflow_ui_check.py`): the runs table
    and the comparison page list the run with its judged reward (eval_reward/mean) as the store holds it, the generation
    table renders every logged column and the first policy answer, and the registered model's pages show
    version 1 and the run it came from."""
    from benchmarks import mlflow_ui_check as ui

    if ui.chromium_path() is None:
        pytest.skip("no browser: needs Chromium (apt-get install chromium) and Playwright (pip install playwright)")
    client, trial = tracked_run["client"], tracked_run["run"]
    parent = client.create_run(trial.info.experiment_id, run_name="ui-sweep", tags={
        "prefsweep.best_run_id": trial.info.run_id, "prefsweep.best_trial": "trial_a"})
    best_model.register_best(parent.info.run_id, "ui-check", tracked_run["output_dir"].parent, tracked_run["uri"])
    want = ui.expected_from_store(tracked_run["uri"], "trial-outputs", "ui-check", "eval_reward/mean")
    assert list(want.trials) == [trial.info.run_id] and want.version == "1"
    problems = ui.check(tracked_run["uri"], "trial-outputs", "ui-check", "eval_reward/mean",
                        tmp_path / "shots", tmp_path)
    assert problems == []


def test_metric_text_is_the_ui_format():
    """MLflow's `Utils.formatMetric` (JavaScript): Math.round(62.5) = 63, half up, where Python's round gives
    62; 3 decimals below 10, 2 below 100, 1 above; no trailing zeros; exponent form below 1e-3."""
    from benchmarks.mlflow_ui_check import metric_text

    assert metric_text(0.0625) == "0.063" and metric_text(-0.0625) == "-0.062"
    assert [metric_text(v) for v in (0.765625, 19.6449, 123.46, -40.0004, 0.5, 0.00015, 0.0)] == [
        "0.766", "19.64", "123.5", "-40", "0.5", "1.500e-4", "0"]
