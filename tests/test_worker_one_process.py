"""`rayjobs.worker.train_as_one_process`: which Ray Train workers drop `LOCAL_RANK`, so that accelerate sees one
process and the Trainer does not wrap the model in DDP (the end-to-end check, the parallel mode a one-worker run
saved, is in `tests/test_train_own_ray.py`)."""

from __future__ import annotations

import pytest

from rayjobs.worker import train_as_one_process

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
