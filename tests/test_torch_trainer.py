"""`rayjobs.torch_trainer.LeanTorchTrainer`: Ray Train's `TorchTrainer` less the dataset manager actor a run
without Ray Datasets would start for nothing, and, for a run that owns its Ray, less the placement-group
cleaner, the autoscaling coordinator and the controller's own process (a real run of that controller:
`tests/test_train_own_ray.py`)."""

from __future__ import annotations

import pytest


def test_a_run_without_datasets_starts_no_dataset_manager_and_keeps_every_other_callback():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from rayjobs.torch_trainer import LeanTorchTrainer

    def names(trainer):
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    plain = TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    lean = LeanTorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    assert DatasetsCallback.__name__ in names(plain)
    assert names(lean) == [n for n in names(plain) if n != DatasetsCallback.__name__]
    lean.datasets = {"train": [1, 2]}  # given datasets, it is the plain trainer
    assert names(lean) == names(plain)


def test_a_run_that_owns_its_ray_starts_no_placement_group_cleaner_and_asks_no_autoscaler(monkeypatch):
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, ResizeDecision
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayjobs import torch_trainer
    from rayjobs.torch_trainer import LeanTorchTrainer, NoAutoscalerScalingPolicy

    def names(trainer):
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    scaling = ScalingConfig(num_workers=2, resources_per_worker={"CPU": 3})
    shared = LeanTorchTrainer(lambda: None, scaling_config=scaling)
    own = LeanTorchTrainer(lambda: None, scaling_config=scaling, private_ray=True)
    assert PlacementGroupCleanerCallback.__name__ in names(shared)
    assert names(own) == [n for n in names(shared) if n != PlacementGroupCleanerCallback.__name__]

    # the controller gets a fixed-size policy that decides as Ray's does, with no coordinator to ask; the
    # shared Ray's run hands it to Ray's controller actor, the own Ray's run to a controller in the driver
    handed: list[dict] = []
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kw: handed.append(kw))

    class InDriver:
        def __init__(self, **kw):
            handed.append({**kw, "in_driver": True})

        def run_here(self):
            return "result"

    monkeypatch.setattr(torch_trainer, "DriverTrainController", InDriver)
    for trainer in (shared, own):
        trainer._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(scaling), callbacks=[])
    assert type(handed[0]["scaling_policy"]) is FixedScalingPolicy and "in_driver" not in handed[0]
    assert handed[1]["in_driver"]
    policy = handed[1]["scaling_policy"]
    assert type(policy) is NoAutoscalerScalingPolicy and policy.scaling_config is scaling
    policy.after_controller_start(train_run_context=None)  # Ray's would start the coordinator actor here
    assert policy._coordinator_client is None
    decision = policy.make_decision_for_non_running_worker_group()
    assert decision == ResizeDecision(num_workers=2, resources_per_worker={"CPU": 3})
    with pytest.raises(AssertionError):  # Ray's own policy cannot decide without the coordinator it registered
        FixedScalingPolicy(scaling).make_decision_for_non_running_worker_group()


def test_a_notebooks_running_event_loop_keeps_the_controller_an_actor(monkeypatch):
    """`asyncio.run` cannot nest: inside a running loop (a notebook's) the own Ray's run uses Ray's actor."""
    import asyncio

    from ray.train import ScalingConfig
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayjobs import torch_trainer

    scaling = ScalingConfig(num_workers=1)
    own = torch_trainer.LeanTorchTrainer(lambda: None, scaling_config=scaling, private_ray=True)
    ways: list[str] = []
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kw: ways.append("actor"))
    monkeypatch.setattr(torch_trainer, "DriverTrainController",
                        type("InDriver", (), {"__init__": lambda self, **kw: None,
                                              "run_here": lambda self: ways.append("driver")}))

    async def in_a_loop():
        own._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(scaling), callbacks=[])

    own._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(scaling), callbacks=[])
    asyncio.run(in_a_loop())
    assert ways == ["driver", "actor"]


def test_a_trial_on_the_sweeps_own_ray_runs_its_controller_here_and_keeps_the_cleaner(monkeypatch):
    """A sweep's trial on its local Ray: the controller in the trial's actor (no controller process), no
    autoscaling coordinator, but the placement-group cleaner stays (the sweep's Ray outlives a trial actor)."""
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    from rayjobs import torch_trainer
    from rayjobs.torch_trainer import LeanTorchTrainer, NoAutoscalerScalingPolicy

    scaling = ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1})
    trial = LeanTorchTrainer(lambda: None, scaling_config=scaling, local_trial=True)
    assert PlacementGroupCleanerCallback in {type(c) for c in trial._create_default_callbacks()}
    assert trial.request_abort() is None  # no controller runs here yet: nothing to abort

    class Here:
        def __init__(self, **kw):
            self.kw = kw

        def run_here(self):
            return "result"

    monkeypatch.setattr(torch_trainer, "DriverTrainController", Here)
    assert trial._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(scaling), callbacks=[]) == "result"
    assert isinstance(trial.controller, Here)
    assert type(trial.controller.kw["scaling_policy"]) is NoAutoscalerScalingPolicy


def test_a_controller_running_here_is_aborted_from_another_thread_between_two_of_its_steps():
    """`request_abort` runs the actor's abort on the control loop: the workers go, the state is terminal, and the
    loop ends where it waits (not at Ray's check after its sleep, which calls `exit_actor`: in a trial's actor
    that ends the actor); a controller not (or no longer) running gives None."""
    import asyncio
    import threading

    from ray.train.v2._internal.execution.controller.state import AbortedState, RunningState

    from rayjobs.torch_trainer import DriverTrainController

    events: list[str] = []

    class Group:
        def abort(self):
            events.append("workers aborted")

    class Callbacks:
        def invoke_best_effort(self, hook):
            events.append(hook)

    class Fake(DriverTrainController):  # the control loop alone
        def __init__(self):
            self.state, self._worker_group, self._controller_callback_manager = RunningState(), Group(), Callbacks()
            self.running = threading.Event()

        def get_state(self):
            return self.state

        def _set_state(self, state):
            self.state = state

        async def run(self):  # as Ray's poll: sleep, then a terminal state found there ends the actor
            self.running.set()
            while True:
                await asyncio.sleep(0.01)
                if self.state.is_terminal():
                    events.append("exit_actor")  # in a trial's actor: the actor would end
                    return

    controller = Fake()
    assert controller.request_abort() is None
    loop_thread = threading.Thread(target=lambda: asyncio.run(controller._run_on_this_loop()))
    loop_thread.start()
    assert controller.running.wait(5)
    done = controller.request_abort()
    done.result(timeout=5)
    loop_thread.join(timeout=5)
    assert not loop_thread.is_alive() and isinstance(controller.state, AbortedState)
    assert events == ["before_controller_abort", "workers aborted"]
    assert controller.request_abort() is None  # the loop has closed
