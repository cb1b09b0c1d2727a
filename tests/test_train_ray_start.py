"""`prefsweep train` validates its config while Ray starts (`rayjobs.train._prepare_while_ray_starts`), and a
tracked run's validation thread then resolves the MLflow experiment: Ray's start is replaced by a recorder here;
the real start is exercised by every CLI test on a local Ray."""

from __future__ import annotations

import threading

import pytest
import yaml

from rayjobs import local_ray
from rayjobs import train as ray_train
from tests.test_ray_train import config
from trainer.errors import ConfigError


@pytest.fixture
def starts(monkeypatch):
    """The `ensure_ray` calls."""
    calls: list[dict] = []

    def ensure_ray(**kwargs):
        calls.append(kwargs)
        return "local"

    monkeypatch.setattr(local_ray, "ensure_ray", ensure_ray)
    return calls


def write(tmp_path, raw: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_ray_starts_while_the_config_is_validated_and_the_config_is_the_same(tiny, tmp_path, starts, monkeypatch):
    path = write(tmp_path, config(tiny, tmp_path / "out"))
    prepare, ray_started, overlapped = ray_train.prepare_config, threading.Event(), []

    def validate_once_ray_started(*args):  # a sequential start (validate, then Ray) would wait here in vain
        overlapped.append(ray_started.wait(timeout=10))
        return prepare(*args)

    monkeypatch.setattr(ray_train, "prepare_config", validate_once_ray_started)
    monkeypatch.setattr(local_ray, "ensure_ray", lambda **kwargs: starts.append(kwargs) or ray_started.set() or "local")
    cfg, how, experiment = ray_train._prepare_while_ray_starts(path, ["pref_beta=0.3"])
    assert how == "local" and overlapped == [True] and experiment is ray_train.UNRESOLVED
    assert starts == [{"dashboard": False}]
    assert cfg == prepare(path, ["pref_beta=0.3"]) and cfg.finetuning.pref_beta == 0.3


@pytest.mark.parametrize("change", [["use_ray=false"], ["ray.init_kwargs={num_cpus: 1}"],
                                    ["ray_init_kwargs={num_cpus: 1}"]],
                         ids=["in-process", "init_kwargs", "lf-ray_init_kwargs"])
def test_nothing_starts_early_for_a_run_without_ray_or_with_its_own_init_kwargs(tiny, tmp_path, starts, change):
    cfg, how, experiment = ray_train._prepare_while_ray_starts(write(tmp_path, config(tiny, tmp_path / "out")), change,
                                                               track=True)
    assert how is None and starts == [] and experiment is ray_train.UNRESOLVED  # `run` starts Ray (validated init_kwargs), asks MLflow
    assert cfg.use_ray is (change[0] != "use_ray=false")


def test_a_config_error_is_what_the_user_sees_even_when_ray_fails_too(tiny, tmp_path, starts, monkeypatch):
    import ray

    shutdowns: list[bool] = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(True))
    path = write(tmp_path, {**config(tiny, tmp_path / "out"), "pref_bta": 0.1})
    with pytest.raises(ConfigError, match="pref_bta"):
        ray_train._prepare_while_ray_starts(path, [])
    assert len(starts) == 1 and shutdowns == [True]  # the Ray started alongside is stopped again

    def broken(**kwargs):
        raise RuntimeError("raylet failed to start")

    monkeypatch.setattr(local_ray, "ensure_ray", broken)
    with pytest.raises(ConfigError, match="pref_bta"):
        ray_train._prepare_while_ray_starts(path, [])
    with pytest.raises(RuntimeError, match="raylet"):  # a valid config: Ray's own error
        ray_train._prepare_while_ray_starts(write(tmp_path, config(tiny, tmp_path / "out")), [])


def test_a_tracked_run_resolves_its_experiment_on_the_validation_thread_after_the_checks(tiny, tmp_path, starts,
                                                                                       monkeypatch, store):
    from rayjobs.tracking import store as mlflow_store

    name = mlflow_store.experiment_name()
    assert store.get_experiment_by_name(name) is None
    events: list[tuple[str, str]] = []
    prepare, resolve = ray_train.prepare_config, mlflow_store.try_ensure_experiment
    monkeypatch.setattr(ray_train, "prepare_config",
                        lambda *a: events.append(("validate", threading.current_thread().name)) or prepare(*a))
    monkeypatch.setattr(mlflow_store, "try_ensure_experiment",
                        lambda: events.append(("experiment", threading.current_thread().name)) or resolve())

    bad = write(tmp_path, {**config(tiny, tmp_path / "out"), "pref_bta": 0.1})
    with pytest.raises(ConfigError, match="pref_bta"):
        ray_train._prepare_while_ray_starts(bad, [], track=True)
    assert [e for e, _ in events] == ["validate"] and store.get_experiment_by_name(name) is None  # nothing created

    events.clear()
    cfg, how, experiment = ray_train._prepare_while_ray_starts(write(tmp_path, config(tiny, tmp_path / "out")), [],
                                                               track=True)
    assert [e for e, _ in events] == ["validate", "experiment"]
    assert events[0][1] == events[1][1] != threading.current_thread().name  # both on the validation thread
    assert experiment == store.get_experiment_by_name(name).experiment_id

    events.clear()  # untracked: MLflow is not asked
    assert ray_train._prepare_while_ray_starts(write(tmp_path, config(tiny, tmp_path / "out")), [])[2] \
        is ray_train.UNRESOLVED
    assert [e for e, _ in events] == ["validate"]
