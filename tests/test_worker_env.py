"""The environment a Ray Train worker trains in. `rayjobs.worker.train_as_one_process`: which workers drop
`LOCAL_RANK`, so that accelerate sees one process and the Trainer does not wrap the model in DDP.
`rayjobs.worker_warmup.worker_env`: a private run's workers get the import warm-up hook and Ray's own
`OMP_NUM_THREADS`. The end-to-end checks (the parallel mode a one-worker run saved, the worker's torch threads)
are in `tests/test_train_own_ray.py`."""

from __future__ import annotations

import pytest

from rayjobs.worker import train_as_one_process
from rayjobs.worker_warmup import HOOK, HOOK_ENV, worker_env

RAY_ENV = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_PORT": "29500"}


def test_one_worker_drops_local_rank_and_nothing_else():
    env = dict(RAY_ENV)
    assert train_as_one_process(1, deepspeed=False, environ=env)
    assert env == {k: v for k, v in RAY_ENV.items() if k != "LOCAL_RANK"}


@pytest.mark.parametrize(("world_size", "deepspeed"), [(2, False), (4, False), (1, True), (2, True)])
def test_several_workers_and_deepspeed_keep_the_distributed_environment(world_size, deepspeed):
    env = dict(RAY_ENV, WORLD_SIZE=str(world_size))
    assert not train_as_one_process(world_size, deepspeed=deepspeed, environ=env)
    assert env == dict(RAY_ENV, WORLD_SIZE=str(world_size))


def test_a_process_without_local_rank_is_left_alone():
    env = {"RANK": "0"}
    assert not train_as_one_process(1, deepspeed=False, environ=env)
    assert env == {"RANK": "0"}


@pytest.mark.parametrize(("cpus", "threads"), [(1.0, "1"), (1.5, "1"), (4.0, "4"), (0.5, "1"), (0.0, "1"), (None, "1")])
def test_the_warm_up_sets_the_threads_ray_would_set(cpus, threads):
    # Ray's rule (ray._private.utils.set_omp_num_threads_if_unset): the floor of the worker's CPUs, at least 1
    assert worker_env(deepspeed=False, cpus=cpus, environ={}) == {HOOK_ENV: HOOK, "OMP_NUM_THREADS": threads}


def test_the_users_own_thread_count_wins_and_deepspeed_runs_get_no_hook():
    assert worker_env(deepspeed=False, cpus=4.0, environ={"OMP_NUM_THREADS": "3"}) == {HOOK_ENV: HOOK}
    assert worker_env(deepspeed=True, cpus=4.0, environ={}) == {}
