"""Tests for trainer.losses: hand-derived golden values, invariants, float64 gradient checks, and parity
with LLaMA-Factory 0.9.5 when its venv is present (parity with TRL 1.16: tests/test_losses_trl.py; golden
values of the losses TRL added: tests/test_losses_golden.py).

Golden inputs are chosen so that every sigmoid lands on a fraction: with beta = ln 3,
s(ln 3) = 3/4, s(-ln 3) = 1/4, s(2 ln 3) = 9/10, s(-2 ln 3) = 1/10, s(3 ln 3) = 27/28.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from trainer.losses import LOSSES, get_loss, kto_loss, loss_names, sft_loss

LN2, LN3 = math.log(2), math.log(3)
PAIRED = loss_names("dpo")
HPARAMS = {"beta": 0.5, "label_smoothing": 0.1, "simpo_gamma": 0.3, "gamma_beta_ratio": None,
           "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5, "discopop_tau": 0.05, "cpo_alpha": 1.0}


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def call(name, pi_c, pi_r, ref_c, ref_r, **overrides):
    """Call a paired loss with the hparams its spec declares (HPARAMS, then overrides) and the extra inputs
    it takes (response lengths: overrides, else 1 token each)."""
    spec = get_loss(name)
    kwargs = {k: overrides.get(k, HPARAMS[k]) for k in spec.hparams}
    kwargs.update({k: overrides.get(k, torch.ones_like(pi_c)) for k in spec.inputs})
    return spec.fn(pi_c, pi_r, ref_c, ref_r, **kwargs)


def random_logps(n, seed, avg=False):
    """(n,) float64 log-probs: summed ones in [-60, -5], averaged ones in [-3, -0.05] (orpo needs < 0)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-3.0, -0.05) if avg else (-60.0, -5.0)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def paired_inputs(name, n=8, seed=0):
    avg = get_loss(name).averages_logps
    return [random_logps(n, seed + i, avg) for i in range(4)]


# ---------------------------------------------------------------- golden values


def test_sigmoid_golden():
    """beta = ln 3, eps = 1/4. Row 0: dc = 0.5, dr = -0.5 so h = 1, beta*h = ln 3:
    loss = -(3/4) log(3/4) - (1/4) log(1/4) = (3/4) log(4/3) + (1/4) log 4; rewards (ln3/2, -ln3/2).
    Row 1: h = 0 so loss = log 2 for any eps; rewards beta*(-1) = -ln 3 for both."""
    out = call("sigmoid", t(-10.5, -7.0), t(-20.5, -4.0), t(-11.0, -6.0), t(-20.0, -3.0),
               beta=LN3, label_smoothing=0.25)
    assert_close(out.losses, t(0.75 * math.log(4 / 3) + 0.25 * math.log(4), LN2))
    assert_close(out.chosen_rewards, t(LN3 / 2, -LN3))
    assert_close(out.rejected_rewards, t(-LN3 / 2, -LN3))
    assert out.extras == {}


def test_hinge_golden():
    """beta = 0.5: relu(1 - h/2) for h = 1, 3, -2 gives 0.5, 0 (inside the margin), 2."""
    zeros = torch.zeros(3, dtype=torch.float64)
    out = call("hinge", t(1.0, 3.0, -2.0), zeros, zeros, zeros, beta=0.5)
    assert_close(out.losses, t(0.5, 0.0, 2.0))
    assert_close(out.chosen_rewards, t(0.5, 1.5, -1.0))


def test_ipo_golden():
    """beta = 0.5, so the target margin 1/(2*beta) = 1: (h - 1)**2 for h = 1, 3, -1 gives 0, 4, 4."""
    zeros = torch.zeros(3, dtype=torch.float64)
    out = call("ipo", zeros, t(-1.0, -3.0, 1.0), zeros, zeros, beta=0.5)
    assert_close(out.losses, t(0.0, 4.0, 4.0))
    assert_close(out.rejected_rewards, t(-0.5, -1.5, 0.5))


def test_kto_pair_golden():
    """beta = ln 3, dc = (2, 0) so KL_c = clamp(1) = 1; dr = (1, 3) so KL_r = 2.
    chosen terms 1 - s(ln3 * (dc - KL_r)) = 1 - s(0), 1 - s(-2 ln 3) = 1/2, 9/10;
    rejected terms 1 - s(ln3 * (KL_c - dr)) = 1 - s(0), 1 - s(-2 ln 3) = 1/2, 9/10.
    Swapping KL_c and KL_r would give chosen terms 1/4, 3/4 instead."""
    zeros = torch.zeros(2, dtype=torch.float64)
    out = call("kto_pair", t(2.0, 0.0), t(1.0, 3.0), zeros, zeros, beta=LN3)
    assert_close(out.losses, t(0.5, 0.9, 0.5, 0.9))
    assert_close(out.chosen_rewards, t(2 * LN3, 0.0))


def test_kto_pair_clamps_negative_kl():
    """dc = (1, -1): mean 0; dr = (-1, -3): mean -2 clamped to 0. beta = ln 3:
    chosen 1 - s(ln3*dc) = 1/4, 3/4; rejected 1 - s(-ln3*dr) = 1 - s(ln 3), 1 - s(3 ln 3) = 1/4, 1/28."""
    zeros = torch.zeros(2, dtype=torch.float64)
    out = call("kto_pair", t(1.0, -1.0), t(-1.0, -3.0), zeros, zeros, beta=LN3)
    assert_close(out.losses, t(0.25, 0.75, 0.25, 1 / 28))


def test_orpo_golden():
    """pi_c = -ln 2 (p = 1/2, odds 1), pi_r = -ln 4 (p = 1/4, odds 1/3): log_odds = ln 3,
    odds-ratio term -log s(ln 3) = log(4/3); loss = ln 2 + 0.1 * log(4/3); rewards beta*pi."""
    out = call("orpo", t(-LN2), t(-2 * LN2), None, None, beta=0.1)
    assert_close(out.losses, t(LN2 + 0.1 * math.log(4 / 3)))
    assert_close(out.extras["sft_loss"], t(LN2))
    assert_close(out.extras["odds_ratio_loss"], t(math.log(4 / 3)))
    assert_close(out.chosen_rewards, t(-0.1 * LN2))
    assert_close(out.rejected_rewards, t(-0.2 * LN2))


def test_simpo_golden():
    """beta = 2, gamma = 1. Row 0: pi_c - pi_r = 1/2, so beta*0.5 - 1 = 0 and loss = log 2.
    Row 1: pi_c - pi_r = (1 + ln 3)/2, so the logit is ln 3 and loss = log(4/3). Rewards 2*pi."""
    out = call("simpo", t(-1.0, -1.0), t(-1.5, -1.0 - (1 + LN3) / 2), None, None, beta=2.0, simpo_gamma=1.0)
    assert_close(out.losses, t(LN2, math.log(4 / 3)))
    assert_close(out.chosen_rewards, t(-2.0, -2.0))
    assert_close(out.rejected_rewards, t(-3.0, -3.0 - LN3))


def test_kto_golden():
    """beta = ln 3, KL = mean(0.5, 1.5) - 0 = 1; w_d = 2, w_u = 1/2; d = policy - reference = (2, 0, 3, 1),
    tags (desirable, undesirable, undesirable, desirable):
      row 0 desirable   2 * (1 - s(ln3 * (2 - 1))) = 2 * 1/4 = 1/2
      row 1 undesirable 1/2 * (1 - s(ln3 * (1 - 0))) = 1/2 * 1/4 = 1/8
      row 2 undesirable 1/2 * (1 - s(ln3 * (1 - 3))) = 1/2 * 9/10 = 9/20
      row 3 desirable   2 * (1 - s(0)) = 1
    rewards ln3 * d: desirable rows (2 ln3, ln3), undesirable rows (0, 3 ln3)."""
    out = kto_loss(t(2.0, 0.0, 4.0, 1.0), t(0.0, 0.0, 1.0, 0.0), torch.tensor([True, False, False, True]),
                   t(-9.5, -8.5), t(-10.0, -10.0), beta=LN3, desirable_weight=2.0, undesirable_weight=0.5)
    assert_close(out.losses, t(0.5, 0.125, 0.45, 1.0))
    assert_close(out.chosen_rewards, t(2 * LN3, LN3))
    assert_close(out.rejected_rewards, t(0.0, 3 * LN3))
    assert_close(out.extras["kl"], torch.tensor(1.0, dtype=torch.float64))


def test_kto_kl_reduce_runs_before_clamp():
    """The batch KL mean is -1; clamping first then adding 3 would give 3, the hook first then clamping gives 2.
    With KL = 2, beta = ln 3 and d = 0 undesirable: 1 - s(2 ln 3) = 1/10. Without a hook KL clamps to 0: 1/2."""
    args = (t(0.0), t(0.0), torch.tensor([False]), t(-11.0), t(-10.0))
    out = kto_loss(*args, beta=LN3, kl_reduce=lambda kl: kl + 3)
    assert_close(out.extras["kl"], torch.tensor(2.0, dtype=torch.float64))
    assert_close(out.losses, t(0.1))
    assert_close(kto_loss(*args, beta=LN3).losses, t(0.5))


def test_sft_loss_is_negative_average_chosen_logp():
    assert_close(sft_loss(t(-0.25, -2.0)), t(0.25, 2.0))


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.5])
def test_sigmoid_at_init_is_log2_for_any_label_smoothing(eps):
    pi_c, pi_r = random_logps(6, 1), random_logps(6, 2)
    out = call("sigmoid", pi_c, pi_r, pi_c.clone(), pi_r.clone(), label_smoothing=eps)
    assert_close(out.losses, torch.full((6,), LN2, dtype=torch.float64))
    assert_close(out.losses.float().mean(), torch.tensor(0.6931), atol=5e-5, rtol=0)


@pytest.mark.parametrize(("name", "beta", "expected"), [
    ("hinge", 0.1, 1.0), ("hinge", 2.0, 1.0),
    ("ipo", 0.1, 25.0), ("ipo", 0.5, 1.0),  # (1/(2*beta))**2
    ("kto_pair", 0.1, 0.5), ("kto_pair", 3.0, 0.5),
])
def test_reference_losses_at_init(name, beta, expected):
    pi_c, pi_r, _, _ = paired_inputs(name, n=5, seed=3)
    out = call(name, pi_c, pi_r, pi_c.clone(), pi_r.clone(), beta=beta)
    assert_close(out.losses, torch.full_like(out.losses, expected))
    assert_close(out.chosen_rewards, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize(("w_d", "w_u"), [(1.0, 1.0), (1.33, 0.7)])
def test_kto_at_init_is_half_the_weight(w_d, w_u):
    pi, pi_kl = random_logps(6, 4), random_logps(3, 5)
    tags = torch.tensor([True, False, True, True, False, False])
    out = kto_loss(pi, pi.clone(), tags, pi_kl, pi_kl.clone(), beta=0.1, desirable_weight=w_d,
                   undesirable_weight=w_u)
    assert_close(out.losses, 0.5 * torch.where(tags, w_d, w_u).double())
    assert out.extras["kl"].item() == 0.0


@pytest.mark.parametrize("name", PAIRED)
def test_swapping_chosen_and_rejected_flips_reward_margins(name):
    pi_c, pi_r, ref_c, ref_r = paired_inputs(name, seed=6)
    fwd, back = call(name, pi_c, pi_r, ref_c, ref_r), call(name, pi_r, pi_c, ref_r, ref_c)
    margin = fwd.chosen_rewards - fwd.rejected_rewards
    assert margin.abs().min() > 0
    assert_close(back.chosen_rewards - back.rejected_rewards, -margin)


@pytest.mark.parametrize("name", [n for n in PAIRED if not LOSSES[n].needs_reference])
def test_reference_free_losses_ignore_reference(name):
    pi_c, pi_r, ref_c, ref_r = paired_inputs(name, seed=7)
    base = call(name, pi_c, pi_r, None, None)
    for refs in [(ref_c, ref_r), (ref_r * 3, ref_c - 1), (pi_c, pi_r)]:
        out = call(name, pi_c, pi_r, *refs)
        for a, b in [(out.losses, base.losses), (out.chosen_rewards, base.chosen_rewards),
                     (out.rejected_rewards, base.rejected_rewards)]:
            assert torch.equal(a, b)
        assert out.extras.keys() == base.extras.keys()
        assert all(torch.equal(out.extras[k], base.extras[k]) for k in base.extras)


@pytest.mark.parametrize("name", PAIRED)
def test_rewards_are_detached(name):
    pi_c, pi_r, ref_c, ref_r = (x.requires_grad_() for x in paired_inputs(name, seed=8))
    out = call(name, pi_c, pi_r, ref_c, ref_r)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_kto_pair_kl_is_not_detached_like_trl():
    """TRL 0.7-0.8's kto_pair kept the batch KL in the graph: the rejected term of row 0,
    1 - s(beta*(KL_c - dr_0)), depends on pi_c of row 1 through KL_c = mean(dc) > 0."""
    pi_c = t(1.0, 2.0).requires_grad_()
    zeros = torch.zeros(2, dtype=torch.float64)
    out = call("kto_pair", pi_c, zeros, zeros, zeros, beta=1.0)
    (grad,) = torch.autograd.grad(out.losses[2], pi_c)
    assert grad[1] != 0


def test_kto_kl_is_detached():
    pi_kl = t(-1.0, -2.0).requires_grad_()
    out = kto_loss(t(0.0), t(0.0), torch.tensor([True]), pi_kl, t(-3.0, -3.0), beta=0.1)
    assert out.extras["kl"] > 0 and not out.extras["kl"].requires_grad
    assert not out.losses.requires_grad


# ---------------------------------------------------------------- validation and registry


def test_shape_errors_name_the_argument():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        call("sigmoid", x, torch.zeros(4), x, x)
    with pytest.raises(ValueError, match="reference_chosen_logps"):
        call("hinge", x, x, None, x)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        call("simpo", torch.zeros(3, 1), x, None, None)
    with pytest.raises(ValueError, match="kto_tags"):
        kto_loss(x, x, torch.ones(3), x, x, beta=0.1)
    with pytest.raises(ValueError, match="reference_kl_logps"):
        kto_loss(x, x, torch.ones(3, dtype=torch.bool), x, torch.zeros(2), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        call("ipo", x, x, x, x, beta=0.0)


def test_get_loss_typo_names_nearest_and_all_valid():
    with pytest.raises(ValueError, match="did you mean 'kto_pair'") as err:
        get_loss("kto-pair")
    assert str(err.value).endswith(", ".join(LOSSES))
    with pytest.raises(ValueError, match="'sigmiod'.*did you mean 'sigmoid'"):
        get_loss("sigmiod")


def test_loss_names_by_stage():
    assert loss_names("dpo")[:3] == ["sigmoid", "hinge", "ipo"]
    assert loss_names("dpo")[-4:] == ["kto_pair", "orpo", "simpo", "cpo"]
    assert len(loss_names("dpo")) == 15 + 4  # TRL 1.16's loss types + kto_pair, orpo, simpo, cpo
    assert loss_names("kto") == ["kto"]
    assert loss_names() == list(LOSSES)
    with pytest.raises(ValueError, match="dpo, kto"):
        loss_names("ppo")


def test_registry_facts():
    facts = {n: (s.needs_reference, s.averages_logps) for n, s in LOSSES.items()}
    assert {n for n, (ref, _) in facts.items() if not ref} == {"orpo", "simpo", "sft", "cpo"}
    assert {n for n, (_, avg) in facts.items() if avg} == {"orpo", "simpo"}
    assert {n for n, s in LOSSES.items() if s.inputs == ("chosen_lengths", "rejected_lengths")} == {"ipo", "sigmoid_norm"}
    assert all(s.name == n and s.doc and s.fn.__doc__ for n, s in LOSSES.items())


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", PAIRED)
def test_gradcheck_paired(name):
    """Random inputs keep away from the kinks: hinge's relu (|1 - beta*h| >= 0.3 below) and
    kto_pair's clamp (batch means of dc, dr far from 0)."""
    pi_c, pi_r, ref_c, ref_r = paired_inputs(name, n=4, seed=9)
    if name == "hinge":
        pi_c, pi_r, ref_c, ref_r = t(-3.0, -1.0, -5.0, -2.0), t(-2.0, -4.0, -1.0, -2.5), \
            t(-2.5, -2.0, -3.0, -2.2), t(-2.0, -2.0, -2.0, -2.0)
    if name == "kto_pair":
        ref_c, ref_r = pi_c - t(1.0, -0.5, 2.0, 0.7), pi_r + t(0.3, -1.0, 2.0, 0.1)
    inputs = tuple(x.clone().requires_grad_() for x in (pi_c, pi_r, ref_c, ref_r))
    assert torch.autograd.gradcheck(lambda *xs: call(name, *xs, beta=0.7).losses, inputs)


def test_gradcheck_kto():
    pi, ref = random_logps(5, 10), random_logps(5, 11)
    tags = torch.tensor([True, False, True, False, False])
    pi_kl, ref_kl = random_logps(3, 12), random_logps(3, 13)

    def f(pi, ref):
        return kto_loss(pi, ref, tags, pi_kl, ref_kl, beta=0.2, desirable_weight=1.5, undesirable_weight=0.8).losses

    assert torch.autograd.gradcheck(f, (pi.requires_grad_(), ref.requires_grad_()))


def test_gradcheck_sft_loss():
    assert torch.autograd.gradcheck(sft_loss, (random_logps(3, 14, avg=True).requires_grad_(),))


# ---------------------------------------------------------------- parity with LLaMA-Factory (optional)

LF_HOME = Path.home() / ".cache" / "prefsweep-lf-peer"
LF_SCRIPT = """
import json, sys, types, torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer as T
d = json.load(sys.stdin)
pi_c, pi_r = torch.tensor(d["pi_c"], dtype=torch.float64), torch.tensor(d["pi_r"], dtype=torch.float64)
s = types.SimpleNamespace(beta=d["beta"], simpo_gamma=d["gamma"])
print(json.dumps({"simpo": T.simpo_loss(s, pi_c, pi_r).tolist(), "orpo": T.odds_ratio_loss(s, pi_c, pi_r).tolist()}))
"""


@pytest.mark.skipif(not (LF_HOME / "venv" / "bin" / "python").exists(), reason="LLaMA-Factory peer venv absent")
def test_simpo_and_orpo_match_llamafactory():
    """LLaMA-Factory 0.9.5 computes -log s(beta * (pi_c - pi_r - gamma/beta)) for SimPO: bit-identical here.
    Its ORPO uses log1p(-exp(x)) where ours uses the stable two-branch form, so ORPO agrees to rounding."""
    pi_c, pi_r = random_logps(6, 60, avg=True), random_logps(6, 61, avg=True)
    env = dict(os.environ, PYTHONPATH=str(LF_HOME / "stubs"))  # stubs: torchaudio, imported but unused
    proc = subprocess.run([str(LF_HOME / "venv" / "bin" / "python"), "-c", LF_SCRIPT], env=env, text=True,
                          capture_output=True, timeout=300,
                          input=json.dumps({"pi_c": pi_c.tolist(), "pi_r": pi_r.tolist(), "beta": 2.0, "gamma": 0.7}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lf = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch.equal(call("simpo", pi_c, pi_r, None, None, beta=2.0, simpo_gamma=0.7).losses, t(*lf["simpo"]))
    assert_close(call("orpo", pi_c, pi_r, None, None, beta=2.0).losses, t(*lf["orpo"]), rtol=1e-12, atol=1e-12)
