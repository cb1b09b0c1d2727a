"""sequence_logps against LLaMA-Factory's get_batch_logps maths, by value, by gradient and by memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from trainer.logps import IGNORE_INDEX, SequenceLogps, sequence_logps


def reference_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaMA-Factory 0.9.5 get_batch_logps (ld_alpha=None) in float64, plus the response-position mean logit."""
    logits = logits.to(torch.float64)
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != IGNORE_INDEX
    labels[~loss_mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    count = loss_mask.sum(-1)
    mean_logits = (logits.mean(-1) * loss_mask).sum(-1) / count.clamp(min=1)
    return (per_token * loss_mask).sum(-1), count, mean_logits


def make_batch(batch=4, seq=13, vocab=37, seed=0, dtype=torch.float32):
    """Random logits; labels with a prompt prefix, right padding, and row 2 with no response at all."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, seq, vocab, generator=gen)).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    for b in range(batch):
        prompt_len = 2 + b
        pad_len = b % 3
        labels[b, :prompt_len] = IGNORE_INDEX
        if pad_len:
            labels[b, seq - pad_len:] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX
    return logits, labels


def test_golden_two_token_vocab():
    """V = 2; position 0 has logits (0, log 3), so p = (1/4, 3/4); position 1 has (log 3, 0), p = (3/4, 1/4).

    labels (-100, 0, 0): position 0 predicts token 0 -> log(1/4); position 1 predicts token 0 -> log(3/4);
    position 2 predicts nothing. sum = log(3/16), count = 2, mean = log(3/16) / 2, and the mean logit
    over positions 0 and 1 is (0 + log 3) / 2. Without the shift the answer would be log(3/4) + log(1/2).
    """
    log3 = math.log(3)
    logits = torch.tensor([[[0.0, log3], [log3, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 0]])
    out = sequence_logps(logits, labels)
    torch.testing.assert_close(out.sum, torch.tensor([math.log(1 / 4) + math.log(3 / 4)]))
    torch.testing.assert_close(out.count, torch.tensor([2]))
    torch.testing.assert_close(out.mean, torch.tensor([math.log(3 / 16) / 2]))
    torch.testing.assert_close(out.mean_logits, torch.tensor([log3 / 2]))
    assert out.sum.dtype == torch.float32 and out.count.dtype == torch.int64


def test_matches_float64_reference():
    logits, labels = make_batch()
    out = sequence_logps(logits, labels, chunk_size=5)
    ref_sum, ref_count, ref_mean_logits = reference_logps(logits, labels)
    torch.testing.assert_close(out.sum.double(), ref_sum, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.count, ref_count)
    torch.testing.assert_close(out.mean_logits.double(), ref_mean_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.mean.double(), ref_sum / ref_count.clamp(min=1), rtol=1e-6, atol=1e-6)
    # Row 2 has no response tokens.
    assert out.count[2] == 0 and out.sum[2] == 0 and out.mean[2] == 0 and out.mean_logits[2] == 0
    assert (out.count[[0, 1, 3]] > 0).all()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 1024])
def test_chunking_does_not_change_results(chunk_size):
    """4 x 13 = 52 rows, 31 of them response rows: 3, 7 and 10 divide neither."""
    logits, labels = make_batch()
    whole = sequence_logps(logits, labels, chunk_size=None)
    chunked = sequence_logps(logits, labels, chunk_size=chunk_size)
    for name in ("sum", "count", "mean_logits"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=0)


def test_bfloat16_logits_match_float64_of_the_same_values():
    logits, labels = make_batch(dtype=torch.bfloat16)
    out = sequence_logps(logits, labels, chunk_size=4)
    ref_sum, _, ref_mean_logits = reference_logps(logits, labels)  # float64 of the bf16 values
    assert out.sum.dtype == torch.float32
    torch.testing.assert_close(out.sum.double(), ref_sum, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.mean_logits.double(), ref_mean_logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradient_equals_naive_gradient(chunk_size):
    """d(w . sum)/d logits through the chunked recomputation equals autograd through log_softmax (float64)."""
    logits, labels = make_batch(dtype=torch.float64)
    weights = torch.tensor([0.5, -2.0, 3.0, 1.5], dtype=torch.float64)

    ours = logits.clone().requires_grad_(True)
    (weights * sequence_logps(ours, labels, chunk_size=chunk_size).sum).sum().backward()
    naive = logits.clone().requires_grad_(True)
    (weights * reference_logps(naive, labels)[0]).sum().backward()

    torch.testing.assert_close(ours.grad, naive.grad, rtol=1e-10, atol=1e-12)
    assert (ours.grad[2] == 0).all()  # no response tokens, no gradient
    assert (ours.grad[:, -1] == 0).all()  # the last position predicts nothing


def test_gradcheck_float64():
    logits, labels = make_batch(batch=3, seq=5, vocab=7, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, labels, chunk_size=3).sum, (logits,))


def test_bfloat16_gradient_keeps_dtype_and_matches_float64():
    logits, labels = make_batch(dtype=torch.bfloat16)
    ours = logits.clone().requires_grad_(True)
    sequence_logps(ours, labels, chunk_size=3).mean.sum().backward()
    naive = logits.double().requires_grad_(True)
    (reference_logps(naive, labels)[0] / reference_logps(naive, labels)[1].clamp(min=1)).sum().backward()
    assert ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours.grad.double(), naive.grad, rtol=1e-2, atol=1e-3)  # bf16 rounding of grads


def test_mean_logits_is_detached_and_sum_has_grad():
    logits, labels = make_batch()
    logits.requires_grad_(True)
    out = sequence_logps(logits, labels)
    assert out.sum.requires_grad and not out.mean_logits.requires_grad
    assert isinstance(out, SequenceLogps)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 5, 7\).*\(2, 6\)"):
        sequence_logps(torch.zeros(2, 5, 7), torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 5\)"):
        sequence_logps(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long), chunk_size=0)


def peak_cpu_bytes(fn) -> int:
    """Peak bytes allocated (and not yet freed) on CPU while `fn` runs, from the profiler's allocation events.

    Each Allocation event carries a signed size (negative for a free); their running sum in time order
    is the memory the call holds on top of what existed before.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    held = peak = 0
    for _, size in sorted(events):
        held += size
        peak = max(peak, held)
    return peak


def test_peak_memory_probe_measures_known_allocations():
    """The probe must see allocations, else the memory test below would pass for nothing."""

    def allocate():
        keep = torch.empty(1 << 20, dtype=torch.float32)  # 4 MiB
        temp = torch.empty(1 << 18, dtype=torch.float32)  # 1 MiB, freed before `keep`
        del temp
        return keep

    assert peak_cpu_bytes(allocate) == (4 << 20) + (1 << 20)


def test_chunked_forward_uses_far_less_memory_than_a_float32_copy():
    """bf16 logits (4, 256, 4096): a float32 copy is 16 MiB; LLaMA-Factory's upcast + log_softmax holds 32 MiB.

    With 64-row chunks the extra memory is a few (64, 4096) float32 buffers (1 MiB each) plus O(B*S).
    """
    logits, labels = make_batch(batch=4, seq=256, vocab=4096, dtype=torch.bfloat16)
    float32_copy = logits.numel() * 4

    naive = peak_cpu_bytes(lambda: reference_logps_float32(logits, labels))
    ours = peak_cpu_bytes(lambda: sequence_logps(logits, labels, chunk_size=64))
    assert naive >= 2 * float32_copy  # the probe sees the naive cost
    assert ours < float32_copy / 4, (ours, float32_copy)


def test_chunked_backward_holds_only_the_gradient_buffer():
    """Forward + backward: the unavoidable extra is the bf16 gradient of the logits (8 MiB here).

    Autograd through log_softmax would also keep the float32 log-probs (16 MiB) alive until backward.
    """
    logits, labels = make_batch(batch=4, seq=256, vocab=4096, dtype=torch.bfloat16)
    logits.requires_grad_(True)
    grad_bytes = logits.numel() * logits.element_size()

    def train_step():
        sequence_logps(logits, labels, chunk_size=64).sum.sum().backward()

    ours = peak_cpu_bytes(train_step)
    logits.grad = None
    assert ours < grad_bytes + logits.numel() * 4 / 4, (ours, grad_bytes)


def reference_logps_float32(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What LLaMA-Factory does to model outputs: `.to(torch.float32)` then log_softmax of everything."""
    logits = logits.to(torch.float32)[:, :-1]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    per_token = logits.log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1)
