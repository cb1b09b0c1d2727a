"""One copy of the weights: a training process builds its reference cache with the policy itself.

- The cache built with the policy (LoRA: adapters disabled; full: the initial weights) equals, value for
  value, the cache built from a separately loaded reference (the sweep driver's path, and what a training
  process did before), for full fine-tuning and LoRA.
- Structurally: the build ran the policy object, and the weights were loaded once (`load_causal_lm` one
  call); with a separate `ref_model` that one is loaded before the policy, never beside it.
- The policy leaves the build as it came: its weights and LoRA A matrices equal an uncached run's (the
  build touches no RNG), its adapters enabled, its train/eval mode kept.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

import trainer.models
import trainer.ref_cache.build as build
from trainer.ref_cache import ensure_reference_cache
from trainer.workflow import build_trainer

from .test_ref_cache import make_config

pytestmark = pytest.mark.slow


@pytest.fixture
def spy(monkeypatch):
    """Records every `load_causal_lm` path, and the model each cache build ran and the tables it made."""
    calls = {"loaded": [], "built_with": [], "tables": []}
    load, tables = trainer.models.load_causal_lm, build.reference_tables

    def counting_load(path, *args, **kwargs):
        calls["loaded"].append(path)
        return load(path, *args, **kwargs)

    def recording_tables(model, *args, **kwargs):
        calls["built_with"].append(model)
        made = tables(model, *args, **kwargs)
        calls["tables"].append(made[0])
        return made

    monkeypatch.setattr(trainer.models, "load_causal_lm", counting_load)
    monkeypatch.setattr(build, "reference_tables", recording_tables)
    return calls


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_build_runs_the_policy_and_equals_a_separately_loaded_reference(
    tiny_model, data_dir, tmp_path, spy, finetuning_type
):
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "one", precompute_ref="always",
                      finetuning_type=finetuning_type)
    trainer, facts = build_trainer(cfg)
    info = facts["ref_cache"]
    assert info.status == "miss" and info.reference_forwards == 8
    assert spy["loaded"] == [str(tiny_model)]  # the policy; no second copy for the reference
    assert len(spy["built_with"]) == 1 and spy["built_with"][0] is trainer.model

    separate = ensure_reference_cache(make_config(tiny_model, data_dir, tmp_path / "x", tmp_path / "two",
                                                  finetuning_type=finetuning_type))
    assert spy["loaded"] == [str(tiny_model)] * 2 and spy["built_with"][1] is not trainer.model
    assert separate.key == info.key
    ours, theirs = spy["tables"]
    assert ours.keys() == theirs.keys() == {"train", "eval"}
    for split, table in ours.items():
        assert table.column_names == theirs[split].column_names
        for name in table.column_names:
            a, b = table.column(name).to_numpy(), theirs[split].column(name).to_numpy()
            assert np.array_equal(a, b), (split, name, a, b)
    sums = ours["train"].column("ref_chosen_logps").to_numpy()
    assert np.all(sums < 0) and len(set(sums.tolist())) == len(sums)  # real, distinct log-probs


def lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_lora_policy_leaves_the_build_as_an_uncached_run_starts(tiny_model, data_dir, tmp_path, spy):
    """Same A matrices (and every other weight) as a run with no cache; adapters on; mode kept."""
    cached, _ = build_trainer(make_config(tiny_model, data_dir, tmp_path / "a", tmp_path / "cache",
                                          precompute_ref="always", finetuning_type="lora"))
    uncached, _ = build_trainer(make_config(tiny_model, data_dir, tmp_path / "b", tmp_path / "unused",
                                            precompute_ref="never", finetuning_type="lora"))
    assert cached.reference.kind == "cached" and uncached.reference.kind == "adapters_off"
    a, b = cached.model.state_dict(), uncached.model.state_dict()
    lora_a = [k for k in a if "lora_A" in k]
    assert len(lora_a) >= 8 and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert all(not layer.disable_adapters for layer in lora_layers(cached.model))
    assert not any(a[k].abs().sum() == 0 for k in lora_a)  # initialised, not zero (B is zero)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_build_restores_the_policy_mode(tiny_model, data_dir, tmp_path, mode):
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "cache", precompute_ref="always")
    policy = trainer.models.load_policy(cfg.model, cfg.finetuning, torch.float32)
    policy.train(mode == "train")
    with build._build_reference(cfg, policy, torch.device("cpu")) as model:
        model.eval()  # what reference_tables does
    assert model is policy and policy.training == (mode == "train")


def test_separate_ref_model_loads_before_the_policy(tiny_model, data_dir, tmp_path, spy, caplog):
    """A `ref_model` is not the policy: it is loaded for the build and dropped before the policy loads.
    A max_steps run that reads 2 of the 6 train pairs (1 step x batch 2) says the cache holds them all."""
    ref = tmp_path / "ref"
    shutil.copytree(tiny_model, ref)
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "cache", precompute_ref="always",
                      ref_model=str(ref), max_steps=1)
    with caplog.at_level(logging.INFO, logger="prefsweep"):
        trainer, facts = build_trainer(cfg)
    assert "reads at most 2 of the 6 train examples" in caplog.text
    assert facts["ref_cache"].status == "miss" and trainer.reference.kind == "cached"
    assert spy["loaded"] == [str(ref), str(tiny_model)]
    assert len(spy["built_with"]) == 1 and spy["built_with"][0] is not trainer.model
