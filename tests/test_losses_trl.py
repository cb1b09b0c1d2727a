"""Parity with TRL 1.16 (a test-only dependency): every registry entry with a `trl_name`, every modifier
(f-divergences, LD-DPO, WPO) and combined losses, through TRL's own `DPOTrainer._compute_loss` on a stand-in
trainer and model, against `trainer.losses.paired_objective` (the composition the trainer runs) on the
same per-token log-probs. Several batch sizes and betas; with a reference forward and with precomputed
reference log-probs. MAX_DIFF collects the largest |ours - TRL| per case (printed with -s).
"""

from __future__ import annotations

import contextlib
import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from trainer.logps import SequenceLogps
from trainer.losses import F_DIVERGENCES, LOSSES, get_loss, kto_loss, paired_objective

pytest.importorskip("trl")
from trl import DPOTrainer  # noqa: E402

TRL_LOSSES = [name for name, spec in LOSSES.items() if spec.trl_name]
F_DIV_LOSSES = [n for n in TRL_LOSSES if "f_divergence_type" in LOSSES[n].modifiers]
TOL = 1e-6
MAX_DIFF: dict[str, float] = defaultdict(float)


def batch(b: int, seed: int, dtype=torch.float64, scale: float = 1.0):
    """2B rows: a prompt token then 1..12 completion tokens. Per-token log-probs in [-4, -0.01] * scale on the
    completion (0 elsewhere, as a model gives for ignored labels), a reference shifted from them, and
    per-token log sum_v p^2 values. Shapes (2B, W - 1), aligned with completion_mask[:, 1:]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 13, (2 * b,), generator=g)
    width = int(lengths.max()) + 1
    pos = torch.arange(width)
    completion_mask = ((pos >= 1) & (pos <= lengths[:, None])).long()
    shift = completion_mask[:, 1:].bool()

    def tokens(lo, hi):
        return (lo + (hi - lo) * torch.rand(2 * b, width - 1, generator=g, dtype=torch.float64)).to(dtype) * shift

    policy = tokens(-4.0, -0.01) * scale
    reference = (policy + tokens(-0.5, 0.5) * scale).clamp(max=-1e-3) * shift
    log_sum_sq = tokens(-3.0, -0.1)
    return SimpleNamespace(b=b, completion_mask=completion_mask, shift=shift, policy=policy, reference=reference,
                           log_sum_sq=log_sum_sq, width=width)


def trl_loss(data, loss_types, weights, *, beta, precompute, label_smoothing=0.0, ld_alpha=None,
             f_divergence_type="reverse_kl", f_alpha=0.5, use_weighting=False, discopop_tau=0.05):
    """TRL 1.16's DPOTrainer._compute_loss on a stand-in trainer; the policy and reference "models" hand out
    the batch's per-token log-probs. precompute: reference sums come in the batch (plain sums, or LD-weighted
    by TRL's own `compute_ref_log_probs`), else from a reference forward."""
    zeros = torch.zeros_like(data.policy)

    def model_out(log_probs):
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               log_sum_sq_probs=data.log_sum_sq, aux_loss=None)

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                                  unwrap_model=lambda m: m, autocast=contextlib.nullcontext)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False, is_gradient_checkpointing=False, _modules={}), ref_model=lambda **kw: model_out(data.reference),
        accelerator=accelerator, aux_loss_enabled=False, ld_alpha=ld_alpha, precompute_ref_logps=precompute,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha, loss_types=list(loss_types),
        loss_weights=list(weights), beta=beta, label_smoothing=label_smoothing, use_weighting=use_weighting,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * data.b, data.width, dtype=torch.long),
              "attention_mask": torch.ones(2 * data.b, data.width, dtype=torch.long),
              "completion_mask": data.completion_mask}
    if precompute:
        ref = DPOTrainer.compute_ref_log_probs(
            SimpleNamespace(accelerator=accelerator, ref_model=trainer.ref_model, model=trainer.model,
                            ld_alpha=ld_alpha, args=trainer.args), trainer.ref_model, inputs)
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref
    loss = DPOTrainer._compute_loss(trainer, lambda **kw: model_out(data.policy), inputs, return_outputs=False)
    return loss, trainer._metrics["eval"]


def ours(data, names, weights, *, beta, precompute, label_smoothing=0.0, ld_alpha=None,
         f_divergence_type="reverse_kl", f_alpha=0.5, use_weighting=False, discopop_tau=0.05):
    spec = get_loss("+".join(names))
    count = data.shift.sum(dim=1)
    zeros = torch.zeros(2 * data.b, dtype=data.policy.dtype)
    policy = SequenceLogps(sum=data.policy.sum(1), count=count, mean_logits=zeros, per_token=data.policy,
                           log_sum_sq=(data.log_sum_sq * data.shift).sum(1))
    reference = SequenceLogps(sum=data.reference.sum(1), count=count, mean_logits=zeros, per_token=data.reference)
    kwargs = dict(beta=beta, label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
                  f_alpha_divergence_coef=f_alpha, discopop_tau=discopop_tau)
    return paired_objective(spec, kwargs, weights, policy, reference, response_mask=data.shift, ld_alpha=ld_alpha,
                            use_weighting=use_weighting)


def smoothing(names):
    """TRL's label_smoothing where a loss reads it: robust's typical 0.1, EXO's recommended 1e-3."""
    return 1e-3 if "exo_pair" in names else 0.1 if {"robust", "aot", "aot_unpaired"} & set(names) else 0.0


def compare(case, data, names, weights=None, **kw):
    weights = weights or [1.0] * len(names)
    kw.setdefault("label_smoothing", smoothing(names))
    trl, metrics = trl_loss(data, names, weights, **kw)
    mine = ours(data, names, weights, **kw)
    diff = (mine.loss - trl).abs().item()
    MAX_DIFF[case] = max(MAX_DIFF[case], diff)
    assert diff <= TOL * max(1.0, abs(trl.item())), (case, mine.loss.item(), trl.item())
    if get_loss("+".join(names)).needs_reference:  # sft alone loads no reference: its rewards are beta * pi
        assert abs(mine.rewards.chosen_rewards.mean().item() - metrics["rewards/chosen"][0]) <= TOL
        assert abs(mine.rewards.rejected_rewards.mean().item() - metrics["rewards/rejected"][0]) <= TOL
    return mine, trl


@pytest.mark.parametrize("name", TRL_LOSSES)
def test_every_trl_loss_matches_trl(name):
    """Batch sizes 1, 3, 8; betas 0.05, 0.5, 2; reference forward and precomputed."""
    for b, beta, precompute in [(1, 0.5, True), (3, 0.05, False), (8, 2.0, True), (8, 0.5, False)]:
        data = batch(b, seed=hash((name, b)) % 1000)
        compare(name, data, [name], beta=beta, precompute=precompute)


def test_every_trl_loss_type_is_a_registry_entry():
    """The installed TRL's DPOConfig help lists every loss_type; each is a registry entry under its name."""
    import re

    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_names = re.findall(r"`'([a-z_]+)'`", help_text)
    assert len(trl_names) == 15
    assert sorted(trl_names) == sorted(TRL_LOSSES)
    assert all(LOSSES[n].trl_name == n for n in trl_names)


@pytest.mark.parametrize("f_div", [f for f in F_DIVERGENCES if f != "reverse_kl"])
@pytest.mark.parametrize("name", F_DIV_LOSSES)
def test_f_divergences_match_trl(name, f_div):
    """alpha_divergence runs in float32, as TRL only handles float16/bfloat16/float32 there."""
    dtype = torch.float32 if f_div == "alpha_divergence" else torch.float64
    for b, beta, alpha in [(2, 0.1, 0.5), (6, 1.0, 0.3)]:
        data = batch(b, seed=b + len(name), dtype=dtype, scale=0.2)
        compare(f"{name}/{f_div}", data, [name], beta=beta, precompute=False, f_divergence_type=f_div,
                f_alpha=alpha)


@pytest.mark.parametrize("name", [n for n in TRL_LOSSES if "ld_alpha" in LOSSES[n].modifiers])
def test_ld_alpha_matches_trl(name):
    """LD-DPO on policy and reference; precomputed reference sums go through TRL's compute_ref_log_probs."""
    for b, alpha, precompute in [(4, 0.5, False), (5, 0.0, True), (3, 1.0, False)]:
        compare(f"{name}/ld_alpha", batch(b, seed=40 + b), [name], beta=0.3, precompute=precompute, ld_alpha=alpha)


@pytest.mark.parametrize("name", [n for n in TRL_LOSSES if "use_weighting" in LOSSES[n].modifiers])
def test_wpo_weighting_matches_trl(name):
    for b in (1, 7):
        compare(f"{name}/use_weighting", batch(b, seed=60 + b), [name], beta=0.2, precompute=False,
                use_weighting=True)


@pytest.mark.parametrize(("names", "weights"), [
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),  # MPO
    (["ipo", "nca_pair"], [1.0, 0.5]),
    (["aot", "apo_zero", "discopop"], [0.3, 1.0, 2.0]),
])
def test_combined_losses_match_trl(names, weights):
    data = batch(6, seed=80)
    mine, _ = compare("+".join(names), data, names, weights, beta=0.1, precompute=True)
    compare("+".join(names) + "/all modifiers", data, names, weights, beta=0.1, precompute=False, ld_alpha=0.7)
    assert mine.loss.item() == pytest.approx(sum(w * p.item() for w, p in zip(weights, mine.parts)), rel=1e-12)


# ---------------------------------------------------------------- cDPO, KTO and TRL's experimental trainers


def random_logps(n, seed, avg=False):
    """(n,) float64 log-probs: summed ones in [-60, -5], averaged ones in [-3, -0.05] (orpo needs < 0)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-3.0, -0.05) if avg else (-60.0, -5.0)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def call(name, pi_c, pi_r, ref_c, ref_r, **kwargs):
    return get_loss(name).fn(pi_c, pi_r, ref_c, ref_r, **kwargs)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_conservative_dpo_matches_trl_sigmoid_on_both_orders(eps):
    """TRL 1.16's "sigmoid" ignores label_smoothing, but -log s(-beta*h) is its sigmoid loss with chosen and
    rejected swapped, so cDPO's mean is (1 - eps) * TRL(c, r) + eps * TRL(r, c)."""
    data = batch(6, seed=30)
    swapped = SimpleNamespace(**vars(data))
    for name in ("policy", "reference", "log_sum_sq", "completion_mask", "shift"):
        swapped.__dict__[name] = torch.cat(getattr(data, name).chunk(2)[::-1])
    fwd, _ = trl_loss(data, ["sigmoid"], [1.0], beta=0.2, precompute=False)
    back, _ = trl_loss(swapped, ["sigmoid"], [1.0], beta=0.2, precompute=False)
    mine = ours(data, ["sigmoid"], None, beta=0.2, precompute=False, label_smoothing=eps)
    assert abs(mine.loss.item() - ((1 - eps) * fwd + eps * back).item()) <= TOL


@pytest.mark.parametrize(("alpha", "eps"), [(1.0, 0.0), (0.3, 0.1)])
def test_cpo_matches_trl_cpo_trainer(alpha, eps):
    """TRL 1.16's experimental CPOTrainer, loss_type "sigmoid": losses.mean() + cpo_alpha * NLL, the NLL being
    the cross-entropy over all chosen tokens, i.e. -sum(pi_c) / sum(len_c)."""
    from trl.experimental.cpo import CPOTrainer

    pi_c, pi_r = random_logps(7, 54), random_logps(7, 55)
    len_c = torch.randint(1, 20, (7,), generator=torch.Generator().manual_seed(5))
    trainer = SimpleNamespace(alpha=0.0, beta=0.1, simpo_gamma=0.5, label_smoothing=eps, loss_type="sigmoid",
                              accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen_rewards, _ = CPOTrainer.cpo_loss(trainer, pi_c, pi_r)
    trl_total = losses.mean() + alpha * (-pi_c.sum() / len_c.sum())
    out = call("cpo", pi_c, pi_r, None, None, beta=0.1, label_smoothing=eps, cpo_alpha=alpha, chosen_lengths=len_c)
    assert abs(out.losses.mean().item() - trl_total.item()) <= TOL
    assert torch.equal(out.chosen_rewards, chosen_rewards)


@pytest.mark.parametrize(("kl_shift", "w_d", "w_u"), [(0.8, 1.0, 1.0), (-0.8, 1.5, 0.6)])
def test_kto_matches_trl(kl_shift, w_d, w_u):
    """Run TRL 1.16's KTOTrainer._compute_loss on a stand-in trainer and model (loss inlined, no kto_loss
    method). TRL concatenates desirable then undesirable losses and returns their nanmean; ours keeps input
    order, so compare means. kl_shift > 0 gives a positive batch KL, < 0 one that clamps to 0."""
    from trl import KTOTrainer

    n, m = 7, 5
    pi, ref = random_logps(n, 40), random_logps(n, 41)
    ref_kl = random_logps(m, 42)
    pi_kl = ref_kl + kl_shift + 0.1 * random_logps(m, 43, avg=True)
    tags = torch.tensor([True, False, False, True, True, False, True])

    def batch_rows(rows, token):  # a prompt token then one completion token per row
        return torch.full((rows, 2), token), torch.ones(rows, 2), torch.tensor([[0, 1]] * rows)

    ids, attn, comp = batch_rows(n, 1)
    kl_ids, kl_attn, kl_comp = batch_rows(m, 2)

    def model(**kw):
        logps = pi_kl if kw["input_ids"][0, 0] == 2 else pi
        zeros = torch.zeros(logps.shape[0], 1, dtype=torch.float64)
        return SimpleNamespace(log_probs=logps[:, None], entropy=zeros, mean_logits=zeros)

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=accelerator, calculate_KL=True,
        aux_loss_enabled=False, precompute_ref_logps=True, loss_type="kto", beta=0.3, desirable_weight=w_d,
        undesirable_weight=w_u, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
        _tp_size=1)
    trainer._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, trainer)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "KL_input_ids": kl_ids,
             "KL_attention_mask": kl_attn, "KL_completion_mask": kl_comp, "label": tags, "ref_logps": ref,
             "ref_KL_logps": ref_kl}
    trl_loss = KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    metrics = trainer._metrics["eval"]

    out = kto_loss(pi, ref, tags, pi_kl, ref_kl, beta=0.3, desirable_weight=w_d, undesirable_weight=w_u)
    assert_close(out.losses.mean(), trl_loss)
    assert_close(out.extras["kl"].item(), metrics["kl"][0])
    assert (out.extras["kl"].item() > 0) == (kl_shift > 0)
    assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"][0])
    assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"][0])


def test_simpo_matches_trl_cpo_exactly():
    """TRL 1.16 keeps SimPO in the experimental CPOTrainer.cpo_loss (loss_type="simpo", cpo_alpha=0)."""
    from trl.experimental.cpo import CPOTrainer

    pi_c, pi_r = random_logps(8, 50, avg=True), random_logps(8, 51, avg=True)
    trainer = SimpleNamespace(alpha=0.0, beta=2.5, simpo_gamma=1.4, label_smoothing=0.0, loss_type="simpo",
                              accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, pi_c, pi_r)
    out = call("simpo", pi_c, pi_r, None, None, beta=2.5, simpo_gamma=1.4)
    assert torch.equal(out.losses, losses)
    assert torch.equal(out.chosen_rewards, chosen_rewards) and torch.equal(out.rejected_rewards, rejected_rewards)
    by_ratio = call("simpo", pi_c, pi_r, None, None, beta=2.5, gamma_beta_ratio=1.4 / 2.5)
    assert (by_ratio.losses - losses).abs().max() <= TOL


def test_orpo_matches_trl():
    """TRL 1.16's experimental ORPOTrainer.odds_ratio_loss returns beta * log s(log_odds) (the sign is applied
    by its caller) and casts to float32, hence the float32 tolerance."""
    from trl.experimental.orpo import ORPOTrainer

    pi_c, pi_r = random_logps(8, 52, avg=True), random_logps(8, 53, avg=True)
    trainer = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    trl_ratio_losses, *_ = ORPOTrainer.odds_ratio_loss(trainer, pi_c, pi_r)
    out = call("orpo", pi_c, pi_r, None, None, beta=0.25)
    assert_close(0.25 * out.extras["odds_ratio_loss"], -trl_ratio_losses.double(), rtol=1e-5, atol=1e-6)
    assert_close(out.losses, out.extras["sft_loss"] + 0.25 * out.extras["odds_ratio_loss"])


def test_report_max_abs_diff():
    """Runs last in this file: prints the largest |ours - TRL| per case (pytest -s)."""
    for case, diff in sorted(MAX_DIFF.items()):
        print(f"TRL parity {case}: max |diff| {diff:.3g}")
    assert all(d <= TOL for d in MAX_DIFF.values())
