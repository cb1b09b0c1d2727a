"""hidden_logps against sequence_logps and float64 log_softmax, by value, gradient and memory; the head swap on
a real tiny Llama, bare, under PEFT LoRA and under DDP."""

from __future__ import annotations

import math

import peft
import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from tests.test_logps import peak_cpu_bytes
from trainer.lean_head import hidden_logps, hidden_states_as_logits
from trainer.logps import IGNORE_INDEX, sequence_logps


def reference_logps(hidden, weight, labels, bias=None):
    """Naive float64: logits = h W^T + b, log_softmax of all of them, pick the shifted labels, sum the response."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    per_token = logits.log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    count = mask.sum(-1)
    mean_logits = (logits.mean(-1) * mask).sum(-1) / count.clamp(min=1)
    return (per_token * mask).sum(-1), count, mean_logits


def make_inputs(batch=4, seq=13, hidden_size=6, vocab=37, seed=0, dtype=torch.float32):
    """Random hidden states, weight and bias; labels with a prompt prefix, right padding, and row 2 with no
    response at all."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, hidden_size, generator=gen).to(dtype)
    weight = torch.randn(vocab, hidden_size, generator=gen).to(dtype)
    bias = torch.randn(vocab, generator=gen).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    for b in range(batch):
        labels[b, : 2 + b] = IGNORE_INDEX
        if b % 3:
            labels[b, seq - b % 3 :] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX
    return hidden, weight, bias, labels


def test_golden_identity_head():
    """With W = I (H = V = 2) the hidden states are the logits: the golden case of test_logps.

    Position 0 has logits (0, log 3), p = (1/4, 3/4); position 1 has (log 3, 0), p = (3/4, 1/4). labels
    (-100, 0, 0): position 0 predicts token 0 -> log(1/4), position 1 predicts token 0 -> log(3/4), position
    2 predicts nothing. sum = log(3/16), count = 2, mean logit over positions 0 and 1 = (0 + log 3) / 2.
    """
    log3 = math.log(3)
    hidden = torch.tensor([[[0.0, log3], [log3, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 0]])
    out = hidden_logps(hidden, torch.eye(2), labels)
    torch.testing.assert_close(out.sum, torch.tensor([math.log(3 / 16)]))
    torch.testing.assert_close(out.count, torch.tensor([2]))
    torch.testing.assert_close(out.mean_logits, torch.tensor([log3 / 2]))
    assert out.sum.dtype == torch.float32 and out.count.dtype == torch.int64


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("vocab_chunk_size", [5, None])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
def test_matches_sequence_logps_and_float64_reference(chunk_size, vocab_chunk_size, with_bias):
    """31 response rows and V = 37: row chunks 3 and 7 and vocab chunk 5 divide neither."""
    hidden, weight, bias, labels = make_inputs()
    bias = bias if with_bias else None
    out = hidden_logps(hidden, weight, labels, chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size, bias=bias)
    logits = hidden @ weight.T + (0 if bias is None else bias)
    via_logits = sequence_logps(logits, labels)
    ref_sum, ref_count, ref_mean_logits = reference_logps(hidden, weight, labels, bias)

    torch.testing.assert_close(out.sum, via_logits.sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.count, via_logits.count)
    torch.testing.assert_close(out.mean_logits, via_logits.mean_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sum.double(), ref_sum, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(out.count, ref_count)
    torch.testing.assert_close(out.mean_logits.double(), ref_mean_logits, rtol=1e-6, atol=1e-5)
    assert out.count[2] == 0 and out.sum[2] == 0 and out.mean[2] == 0 and out.mean_logits[2] == 0
    assert (out.count[[0, 1, 3]] > 0).all()


@pytest.mark.parametrize("chunk_size, vocab_chunk_size", [(None, None), (4, 5), (1, 1)])
def test_gradients_equal_naive_gradients(chunk_size, vocab_chunk_size):
    """d(c . sum) w.r.t. hidden, weight and bias through the block-wise recomputation equals autograd through
    the naive float64 log_softmax."""
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    coef = torch.tensor([0.5, -2.0, 3.0, 1.5], dtype=torch.float64)

    ours = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    out = hidden_logps(ours[0], ours[1], labels, chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size, bias=ours[2])
    (coef * out.sum).sum().backward()
    naive = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    (coef * reference_logps(*naive[:2], labels, naive[2])[0]).sum().backward()

    for a, b in zip(ours, naive):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert (ours[0].grad[2] == 0).all()  # no response tokens, no gradient
    assert (ours[0].grad[:, -1] == 0).all()  # the last position predicts nothing


def test_gradcheck_float64():
    hidden, weight, bias, labels = make_inputs(batch=3, seq=5, hidden_size=3, vocab=7, dtype=torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (hidden, weight, bias))

    def fn(h, w, b):
        return hidden_logps(h, w, labels, chunk_size=2, vocab_chunk_size=3, bias=b).sum

    assert torch.autograd.gradcheck(fn, inputs)


def test_frozen_head_gets_no_gradient_and_hidden_gradient_is_unchanged():
    hidden, weight, _, labels = make_inputs(dtype=torch.float64)
    frozen = hidden.clone().requires_grad_(True)
    hidden_logps(frozen, weight, labels, chunk_size=3).sum.sum().backward()
    trained_w = weight.clone().requires_grad_(True)
    both = hidden.clone().requires_grad_(True)
    hidden_logps(both, trained_w, labels, chunk_size=3).sum.sum().backward()
    assert weight.grad is None
    torch.testing.assert_close(frozen.grad, both.grad, rtol=0, atol=0)

    only_w = weight.clone().requires_grad_(True)
    hidden_logps(hidden, only_w, labels, chunk_size=3).sum.sum().backward()
    assert hidden.grad is None
    torch.testing.assert_close(only_w.grad, trained_w.grad, rtol=0, atol=0)


def test_bfloat16_inputs_match_float64_of_the_same_values():
    """Computed in float32 from the bf16 values (no bf16 logits): close to float64; gradients come back in bf16."""
    hidden, weight, bias, labels = make_inputs(dtype=torch.bfloat16)
    ours = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    out = hidden_logps(ours[0], ours[1], labels, chunk_size=3, vocab_chunk_size=8, bias=ours[2])
    ref_sum, _, ref_mean_logits = reference_logps(hidden, weight, labels, bias)
    assert out.sum.dtype == torch.float32
    torch.testing.assert_close(out.sum.double(), ref_sum, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(out.mean_logits.double(), ref_mean_logits, rtol=1e-6, atol=1e-5)

    out.mean.sum().backward()
    naive = [t.double().requires_grad_(True) for t in (hidden, weight, bias)]
    ref_sum, ref_count, _ = reference_logps(*naive[:2], labels, naive[2])
    (ref_sum / ref_count.clamp(min=1)).sum().backward()
    for a, b in zip(ours, naive):
        assert a.grad.dtype == torch.bfloat16
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-2, atol=1e-3)  # one bf16 rounding


def test_autocast_does_not_lower_the_precision():
    """A bf16 Trainer runs the loss under autocast, which would turn the float32 matmuls into bf16 ones."""
    hidden, weight, bias, labels = make_inputs()
    ours = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hidden_logps(ours[0], ours[1], labels, chunk_size=3, bias=ours[2])
        out.sum.sum().backward()
    plain = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    expected = hidden_logps(plain[0], plain[1], labels, chunk_size=3, bias=plain[2])
    expected.sum.sum().backward()
    torch.testing.assert_close(out.sum, expected.sum, rtol=1e-6, atol=1e-6)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_shape_errors_name_the_shapes():
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(2, 4, 3\).*\(2, 5\).*logits_to_keep"):
        hidden_logps(torch.zeros(2, 4, 3), torch.zeros(7, 3), labels)
    with pytest.raises(ValueError, match=r"\(7, 4\).*\(2, 5, 3\)"):
        hidden_logps(torch.zeros(2, 5, 3), torch.zeros(7, 4), labels)
    with pytest.raises(ValueError, match=r"bias of shape \(6,\)"):
        hidden_logps(torch.zeros(2, 5, 3), torch.zeros(7, 3), labels, bias=torch.zeros(6))
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        hidden_logps(torch.zeros(2, 5, 3), torch.zeros(7, 3), labels, vocab_chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        hidden_logps(torch.zeros(2, 5, 3), torch.zeros(7, 3), labels, chunk_size=0)


# ---------------------------------------------------------------- a real tiny Llama through the head swap


def tiny_llama(seed=0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        **overrides,
    )
    return LlamaForCausalLM(config)


def tiny_batch(vocab=1000, seed=1):
    """Two sequences of 12: row 0 has a 4-token prompt, row 1 a 6-token prompt and 3 positions of padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    labels[1, :6] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return ids, mask, labels


def logps_and_grads(model: nn.Module, call, lean: bool):
    """Summed log-probs and {name: grad} after backward of their sum, through the logits or the lean path."""
    model.zero_grad(set_to_none=True)
    ids, mask, labels = tiny_batch()
    if lean:
        with hidden_states_as_logits(model) as head:
            hidden = call(ids, mask).logits
            assert hidden.shape == (2, 12, head.in_features)
            out = hidden_logps(hidden, head.weight, labels, chunk_size=5, vocab_chunk_size=300, bias=head.bias)
    else:
        out = sequence_logps(call(ids, mask).logits, labels)
    out.sum.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same_logps_and_grads(model: nn.Module, call=None):
    call = call or (lambda ids, mask: model(ids, attention_mask=mask))
    plain, plain_grads = logps_and_grads(model, call, lean=False)
    lean, lean_grads = logps_and_grads(model, call, lean=True)
    torch.testing.assert_close(lean.sum, plain.sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean.count, plain.count)
    torch.testing.assert_close(lean.mean_logits, plain.mean_logits, rtol=1e-5, atol=1e-6)
    assert lean_grads.keys() == plain_grads.keys() and lean_grads
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name  # every compared gradient carries signal
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return plain_grads


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_llama_same_logps_and_parameter_gradients(tie):
    """Full fine-tuning: every parameter's gradient, the head (tied to the input embedding or not) included."""
    model = tiny_llama(tie_word_embeddings=tie)
    grads = assert_same_logps_and_grads(model)
    assert "lm_head.weight" in grads or tie
    assert "model.embed_tokens.weight" in grads


def test_tiny_llama_under_peft_lora():
    """LoRA on all linear layers (PEFT leaves the head out): LoRA A and B gradients agree, the head stays frozen."""
    model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    grads = assert_same_logps_and_grads(model)
    assert any("lora_A" in n for n in grads) and any("lora_B" in n for n in grads)
    assert not any("lm_head" in n for n in grads)


def test_tiny_llama_under_ddp(tmp_path):
    """Called through DistributedDataParallel (gloo, one process): the head is found through .module and the
    gradients, all-reduced by DDP's hooks, are those of the bare model."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_llama()
        ddp = nn.parallel.DistributedDataParallel(model)
        assert_same_logps_and_grads(model, call=lambda ids, mask: ddp(ids, attention_mask=mask))
        with pytest.raises(ValueError, match="find_unused_parameters"):
            with hidden_states_as_logits(nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)):
                pass
    finally:
        dist.destroy_process_group()


def test_head_is_restored_on_exit_and_on_exception():
    model = tiny_llama()
    ids, mask, _ = tiny_batch()
    keys = list(model.state_dict())
    with hidden_states_as_logits(model) as head:
        assert head is model.lm_head
        assert list(model.state_dict()) == keys
        assert model(ids, attention_mask=mask).logits.shape == (2, 12, 32)
    assert "forward" not in model.lm_head.__dict__
    assert model(ids, attention_mask=mask).logits.shape == (2, 12, 1000)

    with pytest.raises(KeyError, match="boom"):
        with hidden_states_as_logits(model):
            raise KeyError("boom")
    assert model(ids, attention_mask=mask).logits.shape == (2, 12, 1000)
    assert list(model.state_dict()) == keys


def test_a_forward_set_before_is_put_back_and_nesting_is_refused():
    """accelerate's hooks replace `module.forward` on the instance; that one must come back, not be deleted."""
    model = tiny_llama()
    previous = model.lm_head.forward  # bound nn.Linear.forward, stored on the instance like accelerate does
    model.lm_head.forward = previous
    with hidden_states_as_logits(model):
        with pytest.raises(RuntimeError, match="already active"):
            with hidden_states_as_logits(model):
                pass
    assert model.lm_head.__dict__["forward"] is previous


def test_logits_to_keep_slicing_is_caught_by_the_shape_check():
    model = tiny_llama()
    ids, mask, labels = tiny_batch()
    with hidden_states_as_logits(model) as head:
        hidden = model(ids, attention_mask=mask, logits_to_keep=1).logits  # (2, 1, 32)
        with pytest.raises(ValueError, match="logits_to_keep"):
            hidden_logps(hidden, head.weight, labels)


TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=32, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize(
    "model_cls, config, key",
    [
        (Gemma2ForCausalLM, Gemma2Config(**TINY, final_logit_softcapping=30.0), "final_logit_softcapping"),
        (CohereForCausalLM, CohereConfig(**{k: v for k, v in TINY.items() if k != "head_dim"}, logit_scale=0.0625),
         "logit_scale"),
        (GraniteForCausalLM, GraniteConfig(**{k: v for k, v in TINY.items() if k != "head_dim"}, logits_scaling=8.0),
         "logits_scaling"),
    ],
)
def test_models_that_transform_logits_after_the_head_are_refused(model_cls, config, key):
    model = model_cls(config)
    with pytest.raises(ValueError, match=key):
        with hidden_states_as_logits(model):
            pass
    assert "forward" not in model.get_output_embeddings().__dict__


def test_neutral_softcap_is_accepted():
    model = Gemma2ForCausalLM(Gemma2Config(**TINY, final_logit_softcapping=None))
    with hidden_states_as_logits(model) as head:
        assert head is model.lm_head


def test_lora_on_the_head_is_refused():
    """A LoRA-adapted head computes h W^T + h A^T B^T: its weight alone would give the wrong logits."""
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="not a plain nn.Linear"):
        with hidden_states_as_logits(model):
            pass


# ---------------------------------------------------------------- memory


def test_forward_backward_memory_is_far_below_one_float32_logits_tensor():
    """B=2, S=512, V=32000, H=64: one float32 (B, S, V) tensor is 125 MiB.

    Through the logits, sequence_logps holds the logits and their gradient (2x that); naive log_softmax
    autograd ~3x. The lean path holds grad_weight (V x H float32, 7.8 MiB), the gradient of the hidden
    states, (M, H) float32 rows, and a few (chunk x vocab_chunk) float32 blocks: logits and their gradient.
    """
    batch, seq, vocab, hidden_size = 2, 512, 32000, 64
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, seq, hidden_size, generator=gen).requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / 8).requires_grad_(True)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[:, :128] = IGNORE_INDEX
    float32_logits = batch * seq * vocab * 4

    def peak(step):
        bytes_ = peak_cpu_bytes(step)
        hidden.grad = weight.grad = None
        return bytes_

    through_logits = peak(lambda: sequence_logps(hidden @ weight.T, labels).sum.sum().backward())
    naive = peak(lambda: reference_float32(hidden, weight, labels).sum().backward())
    lean_default = peak(lambda: hidden_logps(hidden, weight, labels).sum.sum().backward())
    chunk, vocab_chunk = 256, 4096
    lean_small = peak(
        lambda: hidden_logps(hidden, weight, labels, chunk_size=chunk, vocab_chunk_size=vocab_chunk).sum.sum().backward()
    )
    assert naive >= 2.5 * float32_logits and through_logits >= 2 * float32_logits  # the probe sees the big ones
    assert lean_default < float32_logits / 3, (lean_default, float32_logits)
    explained = vocab * hidden_size * 4 + 3 * chunk * vocab_chunk * 4 + 4 * batch * seq * hidden_size * 4
    assert lean_small < explained < float32_logits / 5, (lean_small, explained)


def reference_float32(hidden, weight, labels):
    """What a trainer without the lean path does: float32 logits, log_softmax of all of them."""
    logits, labels = (hidden @ weight.T)[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    return (logits.log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2) * mask).sum(-1)
