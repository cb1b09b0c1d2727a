"""Length-grouped sampling (`group_by_length`) and the padding-fraction metrics.

Padding fraction of a batch of rows padded to L: sum(L - len) / (rows * L). The metric pools
positions, so an epoch's value is (all padded positions) / (all positions), not a mean of step values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
import torch

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.length_sampler import SeededLengthGroupedSampler, grouping_batch_size, padded_lengths
from trainer.tiny_model import build_tiny_model
from trainer.workflow import build_trainer, run_training

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "dpo_en_demo.json"
PAIRS_INFO = {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}


def batch_padding(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Mean over batches of sum(max_len_in_batch - len) / (batch * max_len)."""
    fractions = []
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        longest = max(batch)
        fractions.append(sum(longest - n for n in batch) / (len(batch) * longest))
    return sum(fractions) / len(fractions)


# ---- sampler ------------------------------------------------------------------------------------


def skewed_lengths(n: int = 512, seed: int = 0) -> list[int]:
    """Log-normal lengths (many short, a long tail), as chat data is."""
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.empty(n).log_normal_(4.0, 0.8, generator=g).clamp(4, 4096)]


def test_sampler_order_is_a_seeded_permutation():
    lengths = skewed_lengths()
    sampler = SeededLengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))  # every index exactly once
    assert list(SeededLengthGroupedSampler(lengths, batch_size=8, seed=3)) == first  # another rank / a resume
    assert list(sampler) == first  # iterating again without set_epoch: the same epoch
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(len(lengths))) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_sampler_leaves_the_global_rng_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    list(SeededLengthGroupedSampler(skewed_lengths(), batch_size=8, seed=0))
    torch.testing.assert_close(torch.rand(3), expected)


def test_grouping_lowers_padding_below_a_random_order():
    lengths = skewed_lengths()
    grouped = list(SeededLengthGroupedSampler(lengths, batch_size=8, seed=5))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(5)).tolist()
    assert batch_padding(lengths, grouped, 8) < 0.5 * batch_padding(lengths, shuffled, 8)


def test_sampler_golden_small_case():
    """lengths [1, 9, 2, 8, 3, 7], batch 2, seed 0, epoch 0: torch.randperm(6) with seed 0 is
    [2, 5, 3, 0, 1, 4]. Mega-batch multiple min(6 // (2 * 4), 50) = 0 -> 1, so mega-batches of 2:
    [2, 5], [3, 0], [1, 4]; each sorted by length, descending: [5, 2] (7, 2), [3, 0] (8, 1), [1, 4] (9, 3).
    The mega-batch holding the longest (9) swaps its first element with the first mega-batch's:
    [1, 2], [3, 0], [5, 4]. Batch paddings (9-2)/18, (8-1)/16, (7-3)/14. Epoch 1 (seed 0 + 1) differs."""
    lengths = [1, 9, 2, 8, 3, 7]
    assert torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist() == [2, 5, 3, 0, 1, 4]
    sampler = SeededLengthGroupedSampler(lengths, batch_size=2, seed=0)
    order = list(sampler)
    assert order == [1, 2, 3, 0, 5, 4]
    assert batch_padding(lengths, order, 2) == pytest.approx((7 / 18 + 7 / 16 + 4 / 14) / 3)
    sampler.set_epoch(1)
    assert list(sampler) == list(SeededLengthGroupedSampler(lengths, batch_size=2, seed=1)) != order


class Args:
    train_batch_size = 4
    gradient_accumulation_steps = 2
    world_size = 3


def test_grouping_batch_size_is_one_optimizer_step_over_all_workers():
    assert grouping_batch_size(Args()) == 4 * 2 * 3


def test_pair_lengths_are_the_longer_of_chosen_and_rejected():
    rows = datasets.Dataset.from_dict({
        "chosen_input_ids": [[1, 2, 3], [1], [1, 2, 3, 4, 5, 6]],
        "rejected_input_ids": [[1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6]],
        "other": [0, 1, 2],
    })
    assert padded_lengths(rows, "dpo") == [3, 4, 6]
    # an indices mapping (select / train_test_split) is honoured
    assert padded_lengths(rows.select([2, 0]), "dpo") == [6, 3]
    kto = datasets.Dataset.from_dict({"input_ids": [[1, 2], [1, 2, 3]], "kl_input_ids": [[1, 2, 3, 4], [1]]})
    assert padded_lengths(kto, "kto") == [4, 3]
    with pytest.raises(ValueError, match="rejected_input_ids"):
        padded_lengths(rows.remove_columns("rejected_input_ids"), "dpo")


# ---- config -------------------------------------------------------------------------------------


@pytest.fixture
def base(tmp_path) -> dict:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.json").write_text("[]")
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"pairs": PAIRS_INFO}))
    return {"model_name_or_path": str(tmp_path / "model"), "dataset": "pairs",
            "dataset_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out")}


def test_legacy_group_by_length_maps_to_the_sampling_strategy(base):
    cfg = load_config({**base, "group_by_length": True})
    assert cfg.training["train_sampling_strategy"] == "group_by_length"
    assert cfg.training_arguments().train_sampling_strategy == "group_by_length"
    assert "group_by_length" not in cfg.to_flat_dict()  # the resolved config holds the new key only
    assert "train_sampling_strategy" not in load_config({**base, "group_by_length": False}).training
    same = load_config({**base, "group_by_length": True, "train_sampling_strategy": "group_by_length"})
    assert same.training["train_sampling_strategy"] == "group_by_length"


@pytest.mark.parametrize(("extra", "message"), [
    ({"group_by_length": "yes"}, "group_by_length: expected true or false, got 'yes'"),
    ({"group_by_length": True, "train_sampling_strategy": "random"}, "group_by_length: true conflicts with"),
    ({"group_by_length": False, "train_sampling_strategy": "group_by_length"}, "group_by_length: false conflicts"),
])
def test_bad_group_by_length_names_the_key(base, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**base, **extra})


# ---- on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [DEMO], vocab_size=512, seed=0)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """48 demo pairs as dataset `pairs`, cut to skewed lengths: prompt and responses of pair i keep their
    first 20, 40, 80 or 400 characters (by i mod 7), so batches of the dataset order mix short and long."""
    root = tmp_path_factory.mktemp("pairs48")
    keep = [20, 20, 40, 20, 80, 40, 400]
    pairs = json.loads(DEMO.read_text())[:48]
    for i, pair in enumerate(pairs):
        n = keep[i % len(keep)]
        for message in pair["conversations"]:
            message["value"] = message["value"][:n]
        for key in ("chosen", "rejected"):
            pair[key]["value"] = pair[key]["value"][:n]
    (root / "pairs.json").write_text(json.dumps(pairs))
    (root / "dataset_info.json").write_text(json.dumps({"pairs": PAIRS_INFO}))
    return root


def config(tiny_model: Path, pairs_dir: Path, out: Path, **overrides):
    raw = {
        "model_name_or_path": str(tiny_model), "stage": "dpo", "do_train": True, "finetuning_type": "full",
        "dataset": "pairs", "dataset_dir": str(pairs_dir), "template": "default", "cutoff_len": 128,
        "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
        "num_train_epochs": 2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "seed": 7, "use_ray": False, "disable_tqdm": True, "precompute_ref": "never",
    }
    return load_config({**raw, **overrides})


@pytest.mark.slow
def test_padding_fraction_of_a_hand_built_batch(tiny_model, pairs_dir, tmp_path):
    """One pair, chosen 3 tokens and rejected 5, padded to 8: (5 + 3) / 16 positions are padding."""
    trainer, _ = build_trainer(config(tiny_model, pairs_dir, tmp_path / "out"))
    mask = torch.tensor([[1] * 3 + [0] * 5, [1] * 5 + [0] * 3])
    labels = torch.full((2, 8), -100)
    labels[0, 1:3] = labels[1, 2:5] = 7
    batch = {"input_ids": torch.where(mask.bool(), 5, 0), "attention_mask": mask, "labels": labels}
    trainer.compute_loss(trainer.model, batch)
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["padding_fraction"] == 0.5
    # two steps in one logging window pool their positions: (8 + 0) / (16 + 16), not (0.5 + 0) / 2 ...
    trainer.compute_loss(trainer.model, batch)
    trainer.compute_loss(trainer.model, {**batch, "attention_mask": torch.ones_like(mask), "labels": labels})
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["padding_fraction"] == 0.25
    # ... and evaluation logs its own
    trainer.prediction_step(trainer.model, batch, prediction_loss_only=True)
    trainer.log({"eval_loss": 0.0})
    assert trainer.state.log_history[-1]["eval_padding_fraction"] == 0.5


@pytest.mark.slow
def test_epoch_padding_fraction_pools_the_epoch(tiny_model, pairs_dir, tmp_path):
    """The logged per-step and per-epoch values, rebuilt from the sampler's order and the collator."""
    cfg = config(tiny_model, pairs_dir, tmp_path / "out", group_by_length=True, per_device_train_batch_size=5)
    trainer, _ = build_trainer(cfg)
    trainer.train()
    dataset, collate = trainer.train_dataset, trainer.data_collator
    sampler = SeededLengthGroupedSampler(padded_lengths(dataset, "dpo"), batch_size=5, seed=7)
    steps = [e for e in trainer.state.log_history if "loss" in e]
    epochs = [e for e in trainer.state.log_history if "epoch_padding_fraction" in e]
    assert len(epochs) == 2 and all("loss" not in e for e in epochs)
    logged = iter(steps)
    for epoch, entry in enumerate(epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        pads, positions, fractions = 0, 0, []
        for start in range(0, len(order), 5):
            mask = collate([dataset[i] for i in order[start:start + 5]])["attention_mask"]
            pad, total = int((mask == 0).sum()), mask.numel()
            assert next(logged)["padding_fraction"] == pytest.approx(pad / total, abs=1e-12)
            pads, positions = pads + pad, positions + total
            fractions.append(pad / total)
        assert entry["epoch_padding_fraction"] == pytest.approx(pads / positions, abs=1e-12)
        assert entry["epoch"] == epoch + 1
        assert not math.isclose(pads / positions, sum(fractions) / len(fractions), rel_tol=1e-6)
    assert next(logged, None) is None


@pytest.mark.slow
def test_grouping_lowers_padding_and_is_deterministic(tiny_model, pairs_dir, tmp_path):
    """One epoch each; measured: about 0.33 of the positions are padding in a random order, 0.18 grouped."""

    def run(name: str, **overrides):
        result = run_training(config(tiny_model, pairs_dir, tmp_path / name, num_train_epochs=1, **overrides))
        losses = [e["loss"] for e in result.log_history if "loss" in e]
        epochs = [e["epoch_padding_fraction"] for e in result.log_history if "epoch_padding_fraction" in e]
        return losses, epochs

    plain_losses, plain = run("plain")
    grouped_losses, grouped = run("grouped", group_by_length=True)
    again_losses, again = run("again", group_by_length=True)
    assert len(grouped) == len(plain) == 1
    assert grouped[0] < 0.75 * plain[0]
    assert again_losses == grouped_losses and again == grouped
    assert grouped_losses != plain_losses
