"""Short end-to-end runs on the tiny model for the losses and modifiers TRL 1.16 added: the first logged loss
of a run whose policy equals its reference is the hand-derived value (tests/test_losses_golden.py), a
combined loss logs its components, and TR-DPO's reference sync with alpha 1 makes the reference equal the
policy again, so the second step starts at log 2 too. One or two steps each, in-process."""

from __future__ import annotations

import math

import pytest

from tests.test_losses_golden import AT_INIT
from tests.test_train_e2e import train, train_logs
from trainer.losses import LOSSES

pytestmark = pytest.mark.slow
BETA = 0.1
NEW = [n for n in AT_INIT if n not in ("sigmoid", "hinge", "ipo", "kto_pair")]


def at_init(name: str) -> float:
    """AT_INIT was derived with beta = 0.5 and eps = 0.1; redo the beta/eps-dependent ones for this run."""
    if name == "sppo_hard":
        return 2 * (1 / (2 * BETA)) ** 2
    if name == "exo_pair":
        return -math.log(2) - (math.log(1 - 1e-3) + math.log(1e-3)) / 2  # default eps 1e-3
    return AT_INIT[name]


def short(tiny_model, data_dir, out, steps=1, **overrides):
    return train_logs(train(tiny_model, data_dir, out, max_steps=steps, num_train_epochs=1, plot_loss=False,
                            **overrides))


@pytest.mark.parametrize("name", NEW)
def test_first_loss_of_each_new_loss_is_its_value_at_init(tiny_model, data_dir, tmp_path, name):
    assert LOSSES[name].needs_reference
    first = short(tiny_model, data_dir, tmp_path / name, pref_loss=name)[0]
    assert first["loss"] == pytest.approx(at_init(name), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_logs_each_component_with_ld_and_wpo(tiny_model, data_dir, tmp_path):
    """At init each pair's sigmoid term is log 2 and its bco_pair term 2 log 2, times its WPO weight:
    loss/bco_pair = 2 log 2 * mean weight, loss = 0.8 * loss/sigmoid + 0.2 * loss/bco_pair (LD-DPO on too)."""
    first = short(tiny_model, data_dir, tmp_path / "mpo", pref_loss=["sigmoid", "bco_pair"],
                  pref_loss_weights=[0.8, 0.2], ld_alpha=0.5, use_weighting=True)[0]
    weights = first["wpo_weights"]
    assert 0 < weights < 1
    assert first["loss/bco_pair"] == pytest.approx(2 * math.log(2) * weights, rel=1e-5)
    assert first["loss/sigmoid"] == pytest.approx(math.log(2) * weights, rel=1e-5)
    assert first["loss"] == pytest.approx(0.8 * first["loss/sigmoid"] + 0.2 * first["loss/bco_pair"], rel=1e-5)


@pytest.mark.parametrize("sync", [True, False])
def test_tr_dpo_sync_with_alpha_one_resets_the_reference(tiny_model, data_dir, tmp_path, sync):
    extra = {"sync_ref_model": True, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 1} if sync else {}
    logs = short(tiny_model, data_dir, tmp_path / str(sync), steps=2, per_device_train_batch_size=4, **extra)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (logs[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)) == sync
