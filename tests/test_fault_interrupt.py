"""Interrupts: Ctrl-C (SIGINT) on a running sweep saves its state, exits 130 and prints the command that
finishes it; that command, run as printed, completes the sweep without rerunning a finished trial.

One real sweep (2 trials, one at a time, so one is finished and one mid-run when the signal comes) checks
the whole path; SIGTERM (143) and the signal cases around Tune's loop are checked on `SweepInterrupts`
directly. The restored trial's MLflow history is read in full: one value per metric and step (the steps it
re-ran after its checkpoint, and `epoch`, logged by the train and the eval log of one step, are kept once).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from rayjobs.sweep_interrupt import Interrupted, SweepInterrupts, exit_code, resume_command
from tests.test_fault_driver_death import driver_env, has_checkpoint, one_value_per_step, tune_trials  # noqa: F401
from tests.test_ray_sweep import REPO, base_config

NAME = "interrupted"
SAVE_STEPS = 3
# long enough after the first checkpoint (the test's signal) that the trial is still training when the signal lands:
# with its worker forked warm (rayjobs.warm_fork) a 6-step trial could end before Tune stopped it
MAX_STEPS = 24
EVAL_STEPS = MAX_STEPS // 2


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_saves_the_sweep_exits_130_and_the_printed_resume_finishes_it(driver_env, tiny_model, tmp_path):  # noqa: F811
    started = time.monotonic()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tmp_path / "ray_results" / NAME
    spec = {
        "name": NAME,
        "base": base_config(tiny_model, tmp_path / "outputs", max_steps=MAX_STEPS, eval_steps=EVAL_STEPS,
                            plot_loss=False, save_strategy="steps", save_steps=SAVE_STEPS),
        "space": {"pref_loss": {"grid": ["sigmoid", "ipo"]}},
        "metric": "loss",
        "mode": "min",
        "reference_cache": False,
        "max_concurrent_trials": 1,
        "trial_resources": {"num_workers": 1},
        "storage_path": str(tmp_path / "ray_results"),
    }
    spec_path = tmp_path / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**driver_env, "MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": NAME}
    overrides = ["seed=5"]  # the printed command must carry what the user typed

    log = tmp_path / "first.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "rayjobs.sweep", str(spec_path), *overrides], cwd=REPO,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while True:  # one trial finished, the other has reported and holds a checkpoint
                assert driver.poll() is None, f"driver exited early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no halfway point:\n{log.read_text()[-4000:]}"
                trials = tune_trials(exp)
                done = [n for n, t in trials.items() if t["status"] == "TERMINATED"]
                if len(done) == 1 and any(has_checkpoint(exp, n) for n in set(trials) - set(done)):
                    break
                time.sleep(0.5)
            driver.send_signal(signal.SIGINT)  # `kill -INT PID`: the driver alone, as Ctrl-C reaches Python
            code = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
    output = log.read_text()
    assert code == 130, output[-4000:]
    expected = resume_command(spec_path, overrides)
    assert f"Finish it with:\n  {expected}\n" in output, output[-4000:]
    assert expected == f"prefsweep sweep {spec_path} seed=5 --resume"

    before = tune_trials(exp)
    finished = [n for n, t in before.items() if t["status"] == "TERMINATED"]
    unfinished = sorted(set(before) - set(finished))
    assert len(before) == 2 and len(finished) == 1, before
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.status for p in parent] == ["KILLED"]  # not FINISHED: the sweep did not finish
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children[unfinished[0]].info.status == "KILLED"
    finished_history = {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(
        children[finished[0]].info.run_id, k)] for k in children[finished[0]].data.metrics}
    finished_result = (exp / finished[0] / "result.json").read_text()
    interrupted_at_ms = int(time.time() * 1000)

    resumed = subprocess.run(shlex.split(expected), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    assert f"MLflow parent run {parent[0].info.run_id}" in output

    after = tune_trials(exp)
    assert {n: t["id"] for n, t in after.items()} == {n: t["id"] for n, t in before.items()}
    assert all(t["status"] == "TERMINATED" for t in after.values()), after
    assert (exp / finished[0] / "result.json").read_text() == finished_result  # not run again
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted([NAME, *before])  # one parent, one run per trial
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    by_name = {r.info.run_name: r for r in runs}
    old = by_name[finished[0]]
    assert {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(old.info.run_id, k)]
            for k in old.data.metrics} == finished_history  # 0 points added to the finished trial
    for name in before:
        steps = one_value_per_step(client, by_name[name])
        assert steps["loss"] == list(range(1, MAX_STEPS + 1)), (name, steps["loss"])
        assert steps["eval_loss"] == [EVAL_STEPS, MAX_STEPS], (name, steps["eval_loss"])
    restored = by_name[unfinished[0]].info.run_id
    new_steps = sorted(m.step for m in client.get_metric_history(restored, "loss") if m.timestamp > interrupted_at_ms)
    # Went on from its checkpoint, not from step 1. On a fast machine the trial can have logged all its steps
    # before the signal landed; its re-run steps are then skipped (one value per step) and nothing is new.
    assert not new_steps or new_steps[0] > SAVE_STEPS, new_steps
    print(f"interrupt: exit {code}; finished {finished} kept, {unfinished} resumed, new steps {new_steps}; "
          f"{time.monotonic() - started:.0f}s")


@pytest.fixture
def fake_tune_loop():
    """Stands in for Tune's loop: its SIGUSR1 handler, which `Tuner.fit()` installs, counting its calls."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR1, previous)


def test_sigterm_is_handed_to_tune_and_exits_143(fake_tune_loop):
    before, env = signal.getsignal(signal.SIGTERM), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    with SweepInterrupts() as interrupts:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # Python runs the handler between bytecodes of the main thread
        assert interrupts.signum == signal.SIGTERM and fake_tune_loop == [signal.SIGUSR1]
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert exit_code(interrupts.signum) == 143 and exit_code(signal.SIGINT) == 130
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == env


def test_a_signal_before_tunes_loop_stops_at_once():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # Tune has not installed its handler yet
    try:
        with pytest.raises(Interrupted) as caught, SweepInterrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert caught.value.signum == signal.SIGINT


def test_the_resume_command_quotes_what_the_user_typed():
    assert (resume_command("my sweeps/a.yaml", ["max_steps=4", "space.pref_beta.grid=[0.1, 0.5]"], worker_logs=True)
            == "prefsweep sweep 'my sweeps/a.yaml' max_steps=4 'space.pref_beta.grid=[0.1, 0.5]' --worker-logs --resume")
