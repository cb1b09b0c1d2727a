"""`LeanTorchTrainer`: Ray Train's `TorchTrainer` without the per-run actors a run without Ray Datasets
never uses.

Every `fit()` of a Ray Train V2 trainer starts a `DatasetManager` actor (through its `DatasetsCallback`)
whether or not the run has datasets: one more Ray process per run, ~2.2 CPU-seconds to start on this
project's 2-core machines, paid by every trial of a sweep. Our workers read their data themselves (Hugging
Face `datasets`, tokenized once per sweep), so a run given no `datasets=` drops that callback; with
datasets it is the plain `TorchTrainer`.

This leans on `DataParallelTrainer._create_default_callbacks` (Ray 2.60, `ray.train.v2`); where a Ray
release lacks it or the callback class, nothing is dropped.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer

try:
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
except ImportError:  # another Ray layout: keep every default callback
    DatasetsCallback = None


class LeanTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets or DatasetsCallback is None:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
