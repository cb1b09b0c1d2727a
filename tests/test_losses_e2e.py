"""Short end-to-end runs on the tiny model for the losses and modifiers TRL 1.16 added: the first logged loss
of a run whose policy equals its reference is the hand-derived value (tests/test_losses_golden.py), a
combined loss logs its components, and TR-DPO's reference sync with alpha 1 makes the reference equal the
policy again, so the second step starts at log 2 too. One or two steps each, in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch

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


@pytest.fixture(scope="module")
def other_model(tiny_model, tmp_path_factory):
    """The tiny model's architecture and tokenizer with other weights (seed 1): a reference unlike the policy."""
    from tests.conftest import DEMO
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other") / "model", [DEMO], vocab_size=512, seed=1)


# ipo and sigmoid_norm also divide by response lengths, which the log does not hold.
AWAY = [n for n in NEW if not LOSSES[n].inputs]


@pytest.mark.parametrize("name", AWAY)
def test_first_loss_with_another_reference_follows_from_the_logged_rewards(
        tiny_model, other_model, data_dir, tmp_path, name):
    """One pair per step: the logged rewards are beta*dc and beta*dr of that pair, so the logged loss is the
    registry function at (dc, dr) (h != 0 since the reference has other weights)."""
    first = short(tiny_model, data_dir, tmp_path / name, pref_loss=name, ref_model=str(other_model),
                  per_device_train_batch_size=1)[0]
    dc, dr = first["rewards/chosen"] / BETA, first["rewards/rejected"] / BETA
    assert abs(dc - dr) > 0.25  # far enough from h = 0 that the loss differs from its value at init
    kwargs = {"beta": BETA, "label_smoothing": 1e-3 if name == "exo_pair" else 0.0, "discopop_tau": 0.05}
    spec = LOSSES[name]
    zero = torch.zeros(1, dtype=torch.float64)
    out = spec.fn(torch.tensor([dc], dtype=torch.float64), torch.tensor([dr], dtype=torch.float64), zero, zero,
                  **{k: kwargs[k] for k in spec.hparams if k in kwargs})
    assert first["loss"] == pytest.approx(out.losses.item(), rel=1e-4, abs=1e-5)


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


def test_ld_alpha_is_in_the_reference_cache_key_and_cached_runs_equal_live(tiny_model, data_dir, tmp_path):
    """LD-DPO weights the reference's log-probs too: the cache built with ld_alpha has its own key, and a run
    reading it logs what a run with a live reference logs; TR-DPO never reads a cache (its reference moves)."""
    from tests.test_ref_cache import assert_same_history, make_config
    from trainer.ref_cache import ensure_reference_cache, reference_cache_identity
    from trainer.workflow import run_training

    cache = tmp_path / "cache"

    def cfg(name, **overrides):
        short_run = {"pref_loss": "sigmoid_norm", "max_steps": 2, "do_eval": False, "eval_strategy": "no"}
        return make_config(tiny_model, data_dir, tmp_path / name, cache, **{**short_run, **overrides})

    built = ensure_reference_cache(cfg("ld", precompute_ref="always", ld_alpha=0.5))
    assert built.status == "miss"
    assert json.loads((built.path / "manifest.json").read_text())["key_fields"]["ld_alpha"] == 0.5
    assert reference_cache_identity(cfg("a", ld_alpha=0.5)) != reference_cache_identity(cfg("b"))
    live = run_training(cfg("live", precompute_ref="never", ld_alpha=0.5))
    cached = run_training(cfg("cached", precompute_ref="auto", ld_alpha=0.5))
    assert cached.ref_cache["status"] == "hit" and cached.ref_cache["key"] == built.key
    assert_same_history(live.log_history, cached.log_history)
    moving = run_training(cfg("tr", precompute_ref="auto", sync_ref_model=True, max_steps=1))
    assert moving.ref_cache["status"] == "off" and "sync_ref_model" in moving.ref_cache["reason"]
    assert moving.reference_forwards > 0
