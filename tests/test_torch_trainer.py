"""`rayjobs.torch_trainer.LeanTorchTrainer`: Ray Train's `TorchTrainer` less the dataset manager actor a run
without Ray Datasets would start for nothing."""

from __future__ import annotations


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
