"""Hand-derived values of the losses TRL 1.16 added (at h = 0 and at h != 0), bad loss configs (one line
each), and the README table covering the registry.

At h = 0 (policy == reference, dc = dr = 0, beta = 0.5, eps = 0.1, tau = 0.05):
  sigmoid, robust, aot, aot_unpaired, sigmoid_norm: log 2 (robust: (0.9 log 2 - 0.1 log 2) / 0.8 = log 2)
  hinge 1; ipo (1/(2 beta))^2 = 1; apo_zero, apo_down: 1/2 + 1/2 = 1
  nca_pair, bco_pair: 2 log 2 (nca: log 2 + log 2 / 2 + log 2 / 2)
  sppo_hard: 2 * (1/(2 beta))^2 = 2
  exo_pair: 1/2 (log 1/2 - log 0.9) + 1/2 (log 1/2 - log 0.1) = -log 2 - (log 0.9 + log 0.1) / 2
  discopop: m = 1/2, (log 2 + exp(0)) / 2
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from trainer.config import load_config
from trainer.losses import LOSSES, loss_names

LN2, LN3 = math.log(2), math.log(3)
REPO = Path(__file__).resolve().parents[1]
AT_INIT = {
    "sigmoid": LN2, "hinge": 1.0, "ipo": 1.0, "robust": LN2, "aot": LN2, "aot_unpaired": LN2, "sigmoid_norm": LN2,
    "apo_zero": 1.0, "apo_down": 1.0, "nca_pair": 2 * LN2, "bco_pair": 2 * LN2, "sppo_hard": 2.0,
    "exo_pair": -LN2 - (math.log(0.9) + math.log(0.1)) / 2, "discopop": (LN2 + 1) / 2, "kto_pair": 0.5,
}
KWARGS = {"beta": 0.5, "label_smoothing": 0.1, "discopop_tau": 0.05, "f_divergence_type": "reverse_kl",
          "f_alpha_divergence_coef": 0.5}


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def run(name, pi_c, pi_r, ref_c, ref_r, lengths=None, **overrides):
    spec = LOSSES[name]
    kwargs = {k: overrides.get(k, KWARGS.get(k)) for k in spec.hparams}
    ones = torch.ones_like(pi_c)
    kwargs.update({k: (lengths if lengths is not None else ones) for k in spec.inputs})
    return spec.fn(pi_c, pi_r, ref_c, ref_r, **kwargs)


def test_every_reference_loss_has_a_value_at_init():
    assert set(AT_INIT) == {n for n in loss_names("dpo") if LOSSES[n].needs_reference}


@pytest.mark.parametrize("name", sorted(AT_INIT))
def test_value_at_init(name):
    pi_c, pi_r = t(-7.0, -3.0, -12.0), t(-5.0, -9.0, -4.0)
    out = run(name, pi_c, pi_r, pi_c.clone(), pi_r.clone(), lengths=t(3.0, 5.0, 2.0))
    assert_close(out.losses, torch.full_like(out.losses, AT_INIT[name]))


# h != 0, beta = ln 3 (s(ln 3) = 3/4): dc = 1, dr = 0 unless said otherwise.
AWAY = [
    ("nca_pair", 1.0, 0.0, -math.log(0.75) - 0.5 * math.log(0.25) + 0.5 * LN2),
    ("bco_pair", 1.0, 0.0, -math.log(0.75) + LN2),
    ("sppo_hard", 1.0, -1.0, (1 - 0.5 / LN3) ** 2 + (-1 + 0.5 / LN3) ** 2),
    ("apo_zero", 1.0, -1.0, 0.25 + 0.25),                      # 1 - s(ln3) + s(-ln3)
    ("apo_down", 1.0, 0.0, 0.75 + 0.25),                       # s(ln3) + 1 - s(ln3)
    ("robust", 1.0, 0.0, (-0.9 * math.log(0.75) + 0.1 * math.log(0.25)) / 0.8),
    ("exo_pair", 1.0, 0.0, 0.75 * (math.log(0.75) - math.log(0.9)) + 0.25 * (math.log(0.25) - math.log(0.1))),
    ("discopop", 1.0, 0.0, (1 - 1 / (1 + 3 ** -20)) * -math.log(0.75) + 1 / (1 + 3 ** -20) / 3),
]


@pytest.mark.parametrize(("name", "dc", "dr", "expected"), AWAY)
def test_value_away_from_init(name, dc, dr, expected):
    """One row: reference 0, policy (dc, dr); rewards ln3 * (dc, dr)."""
    out = run(name, t(dc), t(dr), t(0.0), t(0.0), beta=LN3)
    assert_close(out.losses, t(expected))
    assert_close(out.chosen_rewards, t(LN3 * dc))


def test_ipo_and_sigmoid_norm_divide_by_length():
    """dc = 6 over 3 tokens, dr = -2 over 2 tokens: per-token margin 2 + 1 = 3. ipo, beta = 1/2:
    (3 - 1)^2 = 4. sigmoid_norm, beta = ln3 / 3: -log s(ln 3) = log(4/3). Rewards stay beta * summed."""
    args = (t(-4.0), t(-7.0), t(-10.0), t(-5.0))
    lengths = {"chosen_lengths": t(3.0), "rejected_lengths": t(2.0)}
    out = LOSSES["ipo"].fn(*args, beta=0.5, **lengths)
    assert_close(out.losses, t(4.0))
    assert_close(out.chosen_rewards, t(3.0))
    out = LOSSES["sigmoid_norm"].fn(*args, beta=LN3 / 3, **lengths)
    assert_close(out.losses, t(math.log(4 / 3)))


def test_aot_sorts_over_the_batch():
    """Policy margins (1, -1) sorted (-1, 1); reference margins (0, 0): x = beta * (-1, 1) with beta = ln 3,
    so the losses by rank are -log s(-ln3) = log 4 and -log s(ln3) = log(4/3) (eps = 0)."""
    out = run("aot", t(0.0, -1.0), t(-1.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=LN3, label_smoothing=0.0)
    assert_close(out.losses, t(math.log(4), math.log(4 / 3)))


def test_sft_and_cpo_nll_are_token_means():
    """Chosen sums -6 over 2 tokens and -2 over 1 token: NLL = 8/3 per token (pref_ftx's mean of per-example
    averages would be (3 + 2)/2). cpo with pi_c = pi_r: log 2 + cpo_alpha * 8/3."""
    out = run("sft", t(-6.0, -2.0), t(-1.0, -1.0), None, None, lengths=t(2.0, 1.0))
    assert_close(out.losses, t(8 / 3, 8 / 3))
    cpo = LOSSES["cpo"].fn(t(-6.0, -2.0), t(-6.0, -2.0), beta=0.5, chosen_lengths=t(2.0, 1.0), cpo_alpha=0.5)
    assert_close(cpo.losses, t(LN2 + 4 / 3, LN2 + 4 / 3))


def test_readme_table_lists_every_loss():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().split(" ")[0] for line in readme.splitlines() if line.startswith("| ")}
    assert set(LOSSES) <= rows


# ---------------------------------------------------------------- bad loss configs: one line each


def base(tmp_path, **extra):
    return {"model_name_or_path": "m", "dataset": "d", "dataset_dir": str(tmp_path), "template": "default",
            "do_train": False, "output_dir": str(tmp_path / "out"), **extra}


@pytest.fixture
def data_info(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"d": {"file_name": "d.json", "ranking": true}}')
    (tmp_path / "d.json").write_text("[]")
    return tmp_path


@pytest.mark.parametrize(("extra", "needles"), [
    ({"pref_loss": "bco_pari"}, ["unknown loss 'bco_pari'", "did you mean 'bco_pair'"]),
    ({"pref_loss": ["sigmoid", "sfft"]}, ["unknown loss 'sfft'", "did you mean 'sft'"]),
    ({"pref_loss": ["sigmoid", "sft"], "pref_loss_weights": [0.8, 0.2, 1.0]},
     ["pref_loss_weights has 3 weights but pref_loss names 2 losses (sigmoid, sft)"]),
    ({"pref_loss": ["sigmoid", "simpo"]}, ["'simpo' cannot be combined"]),
    ({"pref_loss": "bco_pair", "f_divergence_type": "js_divergence"},
     ["f_divergence_type: 'js_divergence' does not apply to pref_loss 'bco_pair'", "it applies to sigmoid"]),
    ({"pref_loss": "aot", "use_weighting": True}, ["use_weighting: True does not apply to pref_loss 'aot'"]),
    ({"pref_loss": "simpo", "ld_alpha": 0.5}, ["ld_alpha: 0.5 does not apply to pref_loss 'simpo'"]),
    ({"pref_loss": "simpo", "simpo_gamma": 0.5, "gamma_beta_ratio": 0.3}, ["simpo_gamma (0.5) and gamma_beta_ratio"]),
    ({"pref_loss": "sigmoid", "discopop_tau": 0.1}, ["discopop_tau is only used by pref_loss discopop"]),
    ({"pref_loss": "sigmoid", "sync_ref_model": True}, ["sync_ref_model: a LoRA reference"]),
    ({"pref_loss": "sigmoid", "ref_model_sync_steps": 8}, ["ref_model_sync_steps is only used with sync_ref_model"]),
    ({"pref_loss": "sigmoid", "f_divergence_type": "kl"}, ["f_divergence_type 'kl' is not one of"]),
    ({"pref_loss": "sigmoid", "ld_alpha": 1.5}, ["ld_alpha must be in [0, 1]"]),
])
def test_bad_loss_config_is_one_clear_line(data_info, extra, needles):
    with pytest.raises(ValueError) as err:
        load_config(base(data_info, **extra))
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_good_loss_configs_resolve(data_info):
    cfg = load_config(base(data_info, pref_loss="sigmoid+bco_pair+sft", pref_loss_weights="0.8,0.2,1.0"))
    assert cfg.loss_name == "sigmoid+bco_pair+sft" and cfg.finetuning.pref_loss_weights == [0.8, 0.2, 1.0]
    assert load_config(base(data_info, pref_loss="exo_pair")).finetuning.dpo_label_smoothing == 1e-3
    assert load_config(base(data_info, pref_loss="simpo", gamma_beta_ratio=0.3)).finetuning.simpo_gamma is None
    tr = load_config(base(data_info, finetuning_type="full", sync_ref_model=True, ref_model_sync_steps=2))
    assert tr.finetuning.sync_ref_model and tr.finetuning.ref_model_sync_steps == 2


# ---------------------------------------------------------------- modifier inputs


def test_ld_weighted_logps_by_hand():
    """Chosen has 3 response tokens (-1, -2, -3), rejected 2 (-4, -5), after a prompt position (0 there):
    shared length 2, so chosen = -1 - 2 + alpha * -3 and rejected = -4 - 5; alpha = 0.5 -> -4.5, -9."""
    from trainer.losses import ld_weighted_logps

    per_token = t(0, -1, -2, -3), t(0, -4, -5, 0)
    mask = torch.tensor([[False, True, True, True], [False, True, True, False]])
    out = ld_weighted_logps(torch.stack(per_token), mask, 0.5)
    assert_close(out, t(-4.5, -9.0))
    assert_close(ld_weighted_logps(torch.stack(per_token), mask, 1.0), t(-6.0, -9.0))
    with pytest.raises(ValueError, match="ld_alpha"):
        ld_weighted_logps(torch.stack(per_token), mask, 1.5)


@pytest.mark.parametrize("lean", [False, True])
def test_log_sum_sq_and_per_token_from_both_logps_paths(lean):
    """log sum_v p_v^2 per response position, summed per row, equals the direct float64 computation; per_token
    sums to `sum` and is 0 off the response (both the logits path and the lean LM-head path)."""
    from trainer.lean_head import hidden_logps
    from trainer.logps import IGNORE_INDEX, response_mask, sequence_logps

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 5, 4, generator=g, dtype=torch.float64), torch.randn(11, 4, generator=g,
                                                                                          dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :2] = IGNORE_INDEX
    labels[1, :1] = IGNORE_INDEX
    labels[1, 4] = IGNORE_INDEX
    logits = hidden @ weight.T
    if lean:
        out = hidden_logps(hidden, weight, labels, chunk_size=2, vocab_chunk_size=3, log_sum_sq=True)
    else:
        out = sequence_logps(logits, labels, chunk_size=2, log_sum_sq=True)
    probs = torch.softmax(logits, dim=-1)
    mask = response_mask(labels)
    expected = (torch.log((probs ** 2).sum(-1)) * mask).sum(-1)
    assert_close(out.log_sum_sq, expected)
    assert_close(out.per_token.sum(-1), out.sum)
    assert (out.per_token[~mask] == 0).all() and (out.per_token[mask] < 0).all()


def test_train_help_lists_every_loss_and_modifier(capsys):
    """`prefsweep train --help` is generated from the registry: one line per loss, one per modifier."""
    from rayjobs.train import main

    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name in LOSSES:
        assert any(line.split()[:1] == [name] for line in lines), name
    from trainer.losses import MODIFIERS

    for key in MODIFIERS:
        assert any(line.split()[:1] == [key] for line in lines), key
