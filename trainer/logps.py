"""Per-sequence log-probs of the response tokens, without a float32 copy of the whole batch's logits.

Same numbers as LLaMA-Factory's `get_batch_logps` (train/trainer_utils.py): position t's logits predict
label t+1 (`logits[:, :-1]` against `labels[:, 1:]`), labels equal to IGNORE_INDEX (prompt, padding) are
left out, and the log-probs of the rest are summed per sequence. LLaMA-Factory upcasts the full
(B, S, V) logits to float32 and takes a `log_softmax` of all of it: two float32 copies, 8 bytes per logit,
at S=4096 and V=128k that is ~4 GiB per sequence. Here only the response rows are read, `chunk_size`
rows at a time: log p(label) = logit[label] - logsumexp(logits) with the logsumexp in float32 on one
chunk, and the backward pass recomputes the softmax of one chunk at a time (d log p / d logit_v =
1[v == label] - softmax_v) instead of keeping any of it. The extra memory is O(chunk_size * V) besides
the gradient of the logits itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from trainer.labels import IGNORE_INDEX


@dataclass
class SequenceLogps:
    """Response log-probs of each sequence of a batch.

    sum: (B,) summed log-probs of the response tokens (float32; float64 when the logits are float64);
        differentiable.
    count: (B,) int64, number of response tokens.
    mean_logits: (B,) detached, mean logit over the response positions (the positions whose logits
        predict a response token) and the whole vocab; 0 for a sequence without response tokens. Feeds
        the `logits/chosen` / `logits/rejected` metrics. LLaMA-Factory averages over every position,
        prompt and padding included; averaging over the response only makes the metric independent of
        how much padding a batch happens to have.
    """

    sum: Tensor
    count: Tensor
    mean_logits: Tensor
    per_token: Tensor | None = None
    """(B, S) log-prob of each position's target, 0 off the response; differentiable (LD-DPO's weights)."""
    log_sum_sq: Tensor | None = None
    """(B,) detached, summed over response positions of log sum_v p(v)^2; only with `log_sum_sq=True` (WPO)."""

    @property
    def mean(self) -> Tensor:
        """(B,) log-probs averaged over response length (ipo, orpo, simpo); 0 without response tokens."""
        return self.sum / self.count.clamp(min=1)


def response_mask(labels: Tensor) -> Tensor:
    """(B, S) bool: True at positions whose logits predict a response token (labels[t + 1] != IGNORE_INDEX)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def sequence_logps(logits: Tensor, labels: Tensor, *, chunk_size: int | None = 1024,
                   log_sum_sq: bool = False) -> SequenceLogps:
    """Summed response log-probs per sequence.

    logits: (B, S, V), any float dtype; labels: (B, S) int64, IGNORE_INDEX on prompt and padding.
    chunk_size: response positions (rows of the flattened B*S) processed at once; None = all at once.
    log_sum_sq: also return the summed log sum_v p(v)^2 (one more logsumexp per row).
    Returns SequenceLogps with sum / count / mean_logits (/ log_sum_sq) of shape (B,) and per_token (B, S).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and labels of shape {tuple(labels.shape)} do not match: "
            "expected (B, S, V) and (B, S)"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
    batch, seq, vocab = logits.shape

    # targets[b, t] = labels[b, t + 1]: what position t's logits predict; the last position predicts nothing.
    targets = torch.full_like(labels, IGNORE_INDEX, dtype=torch.long)
    targets[:, :-1] = labels[:, 1:]
    response = (targets != IGNORE_INDEX).nonzero()  # (M, 2): (b, t) of every response position
    batch_idx, pos_idx = response[:, 0], response[:, 1]
    rows = (batch_idx, pos_idx)
    step = batch_idx.numel() if chunk_size is None else chunk_size

    token_logps, row_logit_sums, row_lse2 = _ResponseLogps.apply(
        logits, rows, targets[rows], max(step, 1), log_sum_sq
    )  # (M,), (M,), (M,): logsumexp(2 * logits) per row, or zeros

    # Scatter back to (B, S) and sum each row, as LLaMA-Factory does: no atomics (index_add on CUDA is not
    # deterministic), and every position is written at most once.
    per_position = token_logps.new_zeros(batch, seq)
    per_token = per_position.index_put(rows, token_logps)
    total = per_token.sum(-1)
    logit_sums = per_position.index_put(rows, row_logit_sums).sum(-1)
    count = (targets != IGNORE_INDEX).sum(-1)
    mean_logits = (logit_sums / (count.clamp(min=1) * vocab)).detach()
    sq = per_position.detach().index_put(rows, row_lse2).sum(-1) if log_sum_sq else None
    return SequenceLogps(sum=total, count=count, mean_logits=mean_logits, per_token=per_token, log_sum_sq=sq)


class _ResponseLogps(torch.autograd.Function):
    """(B, S, V) logits, M selected (b, t) rows and their targets -> (M,) log p(target), (M,) row logit sums.

    Only the input logits and the (M,) logsumexps are kept for backward.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, rows: tuple[Tensor, Tensor], targets: Tensor, step: int, log_sum_sq: bool):
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        n_rows = targets.numel()
        token_logps = logits.new_empty(n_rows, dtype=compute_dtype)
        logsumexp = logits.new_empty(n_rows, dtype=compute_dtype)
        row_logit_sums = logits.new_empty(n_rows, dtype=compute_dtype)
        row_lse2 = logits.new_zeros(n_rows, dtype=compute_dtype)
        for start in range(0, n_rows, step):
            end = min(start + step, n_rows)
            chunk = logits[rows[0][start:end], rows[1][start:end]].to(compute_dtype)  # (m, V)
            logsumexp[start:end] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(1, targets[start:end, None]).squeeze(1)
            token_logps[start:end] = picked - logsumexp[start:end]
            row_logit_sums[start:end] = chunk.sum(dim=-1)
            if log_sum_sq:  # log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z)
                row_lse2[start:end] = torch.logsumexp(2 * chunk, dim=-1) - 2 * logsumexp[start:end]
        ctx.save_for_backward(logits, rows[0], rows[1], targets, logsumexp)
        ctx.step = step
        ctx.mark_non_differentiable(row_logit_sums, row_lse2)
        return token_logps, row_logit_sums, row_lse2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps: Tensor, _grad_sums: Tensor | None, _grad_lse2: Tensor | None):
        logits, batch_idx, pos_idx, targets, logsumexp = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        step = ctx.step
        for start in range(0, targets.numel(), step):
            end = min(start + step, targets.numel())
            rows = (batch_idx[start:end], pos_idx[start:end])
            g = grad_logps[start:end, None]  # (m, 1)
            # d log p(y) / d logit_v = 1[v == y] - softmax_v. Advanced indexing returns a copy, so the
            # in-place ops below never touch the saved logits.
            chunk = logits[rows].to(logsumexp.dtype)  # (m, V)
            chunk.sub_(logsumexp[start:end, None]).exp_().mul_(-g)
            chunk.scatter_add_(1, targets[start:end, None], g)
            grad[rows] = chunk.to(grad.dtype)
        return grad, None, None, None, None
