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
  A sweep's trials share one Ray and keep both.

This leans on `DataParallelTrainer._create_default_callbacks` and `_initialize_and_run_controller` (Ray 2.60,
`ray.train.v2`); where a Ray release lacks them or the classes, nothing is dropped.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer

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


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, private_ray: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.private_ray = private_ray

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        unused = []
        if not self.datasets and DatasetsCallback is not None:
            unused.append(DatasetsCallback)
        if self.private_ray and PlacementGroupCleanerCallback is not None:
            unused.append(PlacementGroupCleanerCallback)
        return [c for c in callbacks if not isinstance(c, tuple(unused))]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        policy = controller_init_kwargs.get("scaling_policy")
        if self.private_ray and NoAutoscalerScalingPolicy is not None and type(policy) is FixedScalingPolicy:
            controller_init_kwargs["scaling_policy"] = NoAutoscalerScalingPolicy(policy.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
