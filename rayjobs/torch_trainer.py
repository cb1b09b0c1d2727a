"""`LeanTorchTrainer`: Ray Train's `TorchTrainer` without the per-run actors a run does not use.

- **No dataset manager without datasets.** Every `fit()` of a Ray Train V2 trainer starts a `DatasetManager`
  actor (through its `DatasetsCallback`) whether or not the run has datasets: one more Ray process per run,
  ~2.2 CPU-seconds to start on this project's 2-core machines, paid by every trial of a sweep. Our workers
  read their data themselves (Hugging Face `datasets`, tokenized once per sweep), so a run given no
  `datasets=` drops that callback; with datasets it keeps it.
- **A run that owns its Ray** (`private_ray=True`: `prefsweep train` on the private local Ray it started,
  which ends with the run) also goes without
  - the autoscaling coordinator: before it starts any worker, the controller registers the run's resources
    with a coordinator actor (a new process, started and waited for: 1.7 CPU-s and ~2.5 s on 2 cores) for
    an autoscaler to read; a local Ray has no autoscaler and cannot add nodes;
  - the placement-group cleaner: an actor (2.2 CPU-s) that removes the run's placement group should the
    controller die while the driver lives on, polling Ray's state API every second for the whole run,
    which is also why the local Ray would need its dashboard. When this run's controller dies, `fit` raises,
    the driver exits and its Ray, placement group included, goes with it.
  - the controller's own process: Ray Train runs its controller as an actor, a new Python process that
    imports Ray Train and torch (`TorchConfig`) before it starts the first worker (~2 s on the critical
    path, ~4 CPU-s on 2 cores). Here it runs in the driver, which has both imported already
    (`DriverTrainController`); Ctrl-C stops the workers and raises `KeyboardInterrupt` in the driver.
    Its one difference to the actor: a worker's train context has no controller handle, which only
    `ray.train.get_all_reported_checkpoints` uses (prefsweep's workers do not).
- **A trial of a sweep on its own local Ray** (`local_trial=True`) runs its controller in
  the trial's actor, which Tune reuses from trial to trial and which has imported Ray Train and torch already:
  no controller process per trial, and no autoscaling coordinator. It keeps the placement-group cleaner (the
  sweep's Ray outlives a trial actor that dies). A scheduler that stops the trial aborts the run through
  `request_abort`. A sweep on someone else's cluster keeps Ray Train's defaults.
- **A run that owns its Ray and its process** (`yield_cpu=True`: the `prefsweep train` CLI) lowers, once the
  training starts, everything of that Ray but the training workers and the raylet to nice 19
  (`rayjobs.background_priority`): the workers train with the machine's cores to themselves, as the
  in-process run does.

This leans on `DataParallelTrainer._create_default_callbacks` and `_initialize_and_run_controller`,
`TrainController.worker_group_cls` and `WorkerGroup._init_train_context_on_workers` (Ray 2.60,
`ray.train.v2`); where a Ray release lacks them or the classes, nothing is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import ray
from ray.train.torch import TorchTrainer

logger = logging.getLogger("prefsweep")

try:
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
except ImportError:  # another Ray layout: keep every default callback
    DatasetsCallback = None
try:
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
except ImportError:
    PlacementGroupCleanerCallback = FixedScalingPolicy = None


if FixedScalingPolicy is not None:

    class NoAutoscalerScalingPolicy(FixedScalingPolicy):
        """Ray Train's fixed-size policy without its resource requests to an autoscaling coordinator."""

        def after_controller_start(self, train_run_context):
            pass

        def _maybe_send_resource_request(self):
            pass

        def _cancel_resource_request(self):
            pass

else:
    NoAutoscalerScalingPolicy = None
try:
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback
except ImportError:
    WorkerGroupCallback = None
try:
    from ray.train.v2._internal.execution.controller import TrainController
    from ray.train.v2._internal.execution.controller.state import AbortedState
    from ray.train.v2._internal.execution.worker_group import WorkerGroup
except ImportError:
    TrainController = WorkerGroup = None


if TrainController is not None and hasattr(WorkerGroup, "_init_train_context_on_workers"):

    class DriverWorkerGroup(WorkerGroup):
        """Ray Train's worker group, started from a controller that is not an actor."""

        def _init_train_context_on_workers(self, workers, sync_actor, train_context_args):
            # Ray's own passes `ray.get_runtime_context().current_actor`, which only an actor has.
            ray.get([
                worker.actor.init_train_context.remote(
                    train_run_context=self._train_run_context,
                    distributed_context=worker.distributed_context,
                    synchronization_actor=sync_actor,
                    storage_context=self._storage_context,
                    worker_callbacks=self._worker_callbacks_to_propagate,
                    controller_actor=None,
                    **{arg: values[i] for arg, values in train_context_args.items()},
                )
                for i, worker in enumerate(workers)
            ])
            self._decorate_worker_log_file_paths(workers)

    class DriverTrainController(TrainController):
        """Ray Train's controller as a plain object of the driver (a run on its own private Ray)."""

        worker_group_cls = DriverWorkerGroup

        _loop: asyncio.AbstractEventLoop | None = None
        _task: asyncio.Task | None = None

        def run_here(self):
            """Run the control loop to the end; the run's `Result`. Ctrl-C stops the workers first."""
            try:
                asyncio.run(self._run_on_this_loop())
            except KeyboardInterrupt:
                self.stop_workers()
                raise
            return self.get_result()

        async def _run_on_this_loop(self):
            from trainer.phases import mark

            mark("train_controller_here")
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            try:
                await self.run()
            except asyncio.CancelledError:  # request_abort's: the run is over
                if not isinstance(self.get_state(), AbortedState):
                    raise

        def request_abort(self) -> concurrent.futures.Future | None:
            """From another thread: what the actor's `abort` does, on the control loop between two of its
            steps; the loop then ends. A future that is done once the workers are gone (None: not running)."""
            loop = self._loop
            if loop is None or loop.is_closed():
                return None
            try:
                return asyncio.run_coroutine_threadsafe(self._abort_on_loop(), loop)
            except RuntimeError:  # the loop closed meanwhile: the run is over
                return None

        async def _abort_on_loop(self):
            if self.get_state().is_terminal():
                return
            self.stop_workers()
            self._set_state(AbortedState())
            # End the loop where it waits: Ray's would find the state terminal after its poll's sleep and
            # call `exit_actor`, which here would end the trial's actor.
            self._task.cancel()

        def stop_workers(self) -> None:
            """What the actor's `abort` does, but for its exit (this process is not an actor to exit, or must
            not exit: a trial's actor)."""
            if self.get_state().is_terminal():
                return
            self._controller_callback_manager.invoke_best_effort("before_controller_abort")
            try:  # Ctrl-C may come while the group starts; the KeyboardInterrupt is what the user must see
                if self._worker_group:
                    self._worker_group.abort()
            except Exception:
                logger.exception("prefsweep: stopping the Ray Train workers failed")

else:
    DriverTrainController = None


if WorkerGroupCallback is not None:

    class YieldCpuToTraining(WorkerGroupCallback):
        """Once a worker group trains (again, after a restart): the rest of the private Ray at nice 19."""

        def after_worker_group_training_start(self, worker_group):
            from rayjobs.background_priority import yield_to_training

            try:
                yield_to_training(worker_group)
            except Exception:  # noqa: BLE001  a speed-up, never a reason for the run to fail
                logger.warning("prefsweep: could not lower Ray's background processes' priority", exc_info=True)

else:
    YieldCpuToTraining = None


def _in_event_loop() -> bool:
    """Whether this thread already runs an asyncio loop (a notebook's): the controller then stays an actor."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, private_ray: bool = False, yield_cpu: bool = False, local_trial: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.private_ray = private_ray
        self.yield_cpu = yield_cpu
        # on a local Ray (no autoscaler), from a process that has Ray Train imported: the controller runs here
        self.controller_here = private_ray or local_trial
        self.controller = None  # the DriverTrainController once one runs here

    def request_abort(self) -> concurrent.futures.Future | None:
        """Abort a run whose controller runs in this process, from another thread (see
        `DriverTrainController.request_abort`); None when none runs here."""
        controller = self.controller
        return controller.request_abort() if controller is not None else None

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        unused = []
        if not self.datasets and DatasetsCallback is not None:
            unused.append(DatasetsCallback)
        if self.private_ray and PlacementGroupCleanerCallback is not None:
            unused.append(PlacementGroupCleanerCallback)
        callbacks = [c for c in callbacks if not isinstance(c, tuple(unused))]
        if self.private_ray and self.yield_cpu and YieldCpuToTraining is not None:
            callbacks.append(YieldCpuToTraining())
        return callbacks

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        policy = controller_init_kwargs.get("scaling_policy")
        if self.controller_here and NoAutoscalerScalingPolicy is not None and type(policy) is FixedScalingPolicy:
            controller_init_kwargs["scaling_policy"] = NoAutoscalerScalingPolicy(policy.scaling_config)
        if self.controller_here and DriverTrainController is not None and not _in_event_loop():
            self.controller = DriverTrainController(**controller_init_kwargs)
            return self.controller.run_here()
        return super()._initialize_and_run_controller(**controller_init_kwargs)
