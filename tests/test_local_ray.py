"""What a private local Ray is started with (`rayjobs.local_ray.ensure_ray`), without starting one: `ray.init`
is replaced by a recorder. The settings themselves are exercised by every test that starts a real local
Ray (`local_ray` in conftest.py): Ray refuses an unknown `_system_config` key at start."""

from __future__ import annotations

import os

import pytest

from rayjobs import local_ray


@pytest.fixture
def init_calls(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(local_ray, "_token_auth", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key in local_ray.LOCAL_ENV:
        monkeypatch.delenv(key, raising=False)
    return calls


def test_local_ray_starts_without_prestarted_workers_or_metrics_and_trains_at_the_users_priority(init_calls):
    assert local_ray.ensure_ray(num_cpus=2) == "local"
    (kwargs,) = init_calls
    assert kwargs["address"] == "local" and kwargs["num_cpus"] == 2
    assert kwargs["_system_config"] == {"prestart_worker_first_driver": False, "enable_metrics_collection": False,
                                        "worker_niceness": 0}
    # Ray Train reads these in the process that builds the TorchTrainer (the driver, or a Tune trial's actor,
    # which gets them from the job's runtime env)
    for key, value in {"RAY_TRAIN_METRICS_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
        assert os.environ[key] == value
        assert kwargs["runtime_env"]["env_vars"][key] == value
    assert kwargs["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == str(local_ray.PROJECT_ROOT)


def test_a_single_runs_ray_starts_no_dashboard_a_sweeps_does(init_calls, monkeypatch):
    import ray
    from ray._private.node import Node

    original = Node.start_monitor
    lean = []  # whether Ray's node start-up was the lean one while `ray.init` ran
    monkeypatch.setattr(ray, "init", lambda **kwargs: (init_calls.append(kwargs),
                                                       lean.append(Node.start_monitor is not original)))
    local_ray.ensure_ray(dashboard=False)  # `prefsweep train`: no placement-group cleaner asks the state API
    local_ray.ensure_ray()
    assert [kwargs["include_dashboard"] for kwargs in init_calls] == [False, True]
    # a config that asks for the dashboard (`ray.init_kwargs`) gets it, with the rest of Ray as it comes
    local_ray.ensure_ray(dashboard=False, init_kwargs={"include_dashboard": True})
    assert [kwargs["include_dashboard"] for kwargs in init_calls] == [False, True, True]
    assert lean == [True, False, False]  # a single run's Ray: no dashboard process, no monitor (test_train_own_ray)
    assert Node.start_monitor is original  # and Ray's own code back once it started


def test_a_configs_init_kwargs_system_config_wins_key_by_key(init_calls):
    local_ray.ensure_ray(init_kwargs={"_system_config": {"enable_metrics_collection": True, "event_stats": False}})
    (kwargs,) = init_calls
    assert kwargs["_system_config"] == {"prestart_worker_first_driver": False, "enable_metrics_collection": True,
                                        "worker_niceness": 0, "event_stats": False}


def test_a_users_environment_wins_over_the_local_defaults(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "1")
    local_ray.ensure_ray()
    assert os.environ["RAY_TRAIN_METRICS_ENABLED"] == "1"
    assert init_calls[0]["runtime_env"]["env_vars"]["RAY_TRAIN_METRICS_ENABLED"] == "1"  # a sweep's trials too


def test_attaching_to_a_cluster_sets_none_of_it(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert local_ray.ensure_ray() == "attached"
    (kwargs,) = init_calls
    assert "_system_config" not in kwargs and "runtime_env" not in kwargs
    assert "RAY_TRAIN_METRICS_ENABLED" not in os.environ
