"""Response log-probs straight from the last hidden states and the LM head: no (B, S, V) logits at all.

`sequence_logps` (trainer/logps.py) avoids float32 copies of the logits but still needs the logits
themselves and, in backward, their gradient: two (B, S, V) tensors. At S=1024, V=128k they are the
largest activations of the step. `hidden_logps` takes the head's input instead, the (B, S, H) hidden
states, and the head weight (V, H), and computes log p(label) = h.w_label - logsumexp_v(h.w_v) for the
response rows only, a block of rows times a block of vocab at a time (online logsumexp over the vocab
blocks). Backward recomputes each block's logits from the saved hidden states and (M,) logsumexps and
turns them into d log p / d logit_v = 1[v == label] - softmax_v on the spot, accumulating
grad_hidden = G @ W and grad_weight = G.T @ h block by block. This is the idea of Liger-Kernel's fused
linear cross-entropy (and of Apple's "Cut Your Losses", arXiv:2411.09009), written in plain PyTorch.

Numbers: everything is computed in float32 (float64 if an input is float64), whatever the input dtype:
the bf16 weight is upcast one vocab block at a time, never whole, and grad_weight is accumulated per
vocab block in float32 and rounded once to the weight's dtype. So the result matches
`sequence_logps(hidden.float() @ weight.float().T, labels)` to float32 rounding.

Extra memory: (rows_chunk x vocab_chunk) float32 logits and their gradient, one (vocab_chunk, H) upcast
of the weight, (M, H) float32 for the response rows, and the gradients themselves ((B, S, H) and (V, H),
the latter only if the head trains). Nothing of size B*S*V.

`hidden_states_as_logits(model)` makes a Hugging Face causal LM hand out its hidden states as `.logits`
so the forward still runs through the caller's (DDP / DeepSpeed / PEFT-wrapped) module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from trainer.logps import IGNORE_INDEX, SequenceLogps

# Config keys of Hugging Face models that transform the logits *after* the output embedding (so the lean
# path, which only sees the head's input and weight, would compute something else), with the value at
# which they do nothing. Found by reading the *ForCausalLM.forward of transformers 5:
#   final_logit_softcapping: Gemma 2/3/3n/4, PaliGemma, T5Gemma, VaultGemma, nanochat (tanh(x / c) * c)
#   logits_soft_cap:         RecurrentGemma (tanh(x / c) * c)
#   logit_scale:             Cohere, Cohere2 (x * s)
#   logits_scaling:          Granite family (x / s), HyperCLOVA X (x * s). MiniCPM3 divides the hidden
#                            states *before* the head, which the lean path would get right; refused
#                            anyway, since one key cannot tell the two apart.
#   lm_head_multiplier:      Falcon-H1 (x * m)
#   output_multiplier:       MuSE (x * m, then a softcap)
_POST_HEAD_CONFIG_KEYS: dict[str, float | None] = {
    "final_logit_softcapping": None,
    "logits_soft_cap": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
    "lm_head_multiplier": 1.0,
    "output_multiplier": 1.0,
}


def hidden_logps(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int | None = 1024,
    vocab_chunk_size: int | None = 4096,
    bias: Tensor | None = None,
    log_sum_sq: bool = False,
) -> SequenceLogps:
    """Summed response log-probs per sequence from the head's input, as `sequence_logps(hidden @ weight.T + bias, labels)`.

    hidden: (B, S, H), any float dtype, differentiable; weight: (V, H), differentiable or frozen;
    bias: (V,) or None; labels: (B, S) int64, IGNORE_INDEX on prompt and padding. Position t predicts
    labels[t + 1], as in `sequence_logps`.
    chunk_size: response rows processed at once; vocab_chunk_size: vocab entries processed at once;
    None = all at once. log_sum_sq: also return the summed log sum_v p(v)^2 (WPO).
    Returns SequenceLogps with sum / count / mean_logits (/ log_sum_sq) of shape (B,) and per_token (B, S)
    (sum float32, or float64 when an input is float64). Gradients come back in the dtypes of hidden, weight and bias.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"hidden of shape {tuple(hidden.shape)} and labels of shape {tuple(labels.shape)} do not match: "
            "expected (B, S, H) and (B, S) (did the model slice the sequence with logits_to_keep?)"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not fit hidden of shape {tuple(hidden.shape)}: "
            "expected (V, H)"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not fit weight of shape {tuple(weight.shape)}")
    for name, size in (("chunk_size", chunk_size), ("vocab_chunk_size", vocab_chunk_size)):
        if size is not None and size < 1:
            raise ValueError(f"{name} must be a positive number or None, got {size}")
    batch, seq, _ = hidden.shape
    vocab = weight.shape[0]

    # targets[b, t] = labels[b, t + 1]: what position t predicts; the last position predicts nothing.
    targets = torch.full_like(labels, IGNORE_INDEX, dtype=torch.long)
    targets[:, :-1] = labels[:, 1:]
    response = (targets != IGNORE_INDEX).nonzero()  # (M, 2): (b, t) of every response position
    rows = (response[:, 0], response[:, 1])
    n_rows = rows[0].numel()
    row_step = max(n_rows if chunk_size is None else chunk_size, 1)
    vocab_step = vocab if vocab_chunk_size is None else vocab_chunk_size

    token_logps, row_logit_sums, row_lse2 = _HiddenLogps.apply(
        hidden, weight, bias, rows[0], rows[1], targets[rows], row_step, vocab_step, log_sum_sq
    )  # (M,), (M,), (M,)

    # Scatter back to (B, S) and sum per row, like sequence_logps: each position is written at most once.
    per_position = token_logps.new_zeros(batch, seq)
    per_token = per_position.index_put(rows, token_logps)
    logit_sums = per_position.index_put(rows, row_logit_sums).sum(-1)
    count = (targets != IGNORE_INDEX).sum(-1)
    mean_logits = (logit_sums / (count.clamp(min=1) * vocab)).detach()
    sq = per_position.detach().index_put(rows, row_lse2).sum(-1) if log_sum_sq else None
    return SequenceLogps(sum=per_token.sum(-1), count=count, mean_logits=mean_logits, per_token=per_token,
                         log_sum_sq=sq)


def _vocab_block(weight: Tensor, bias: Tensor | None, start: int, end: int, dtype: torch.dtype):
    """(v, H) weight rows and (v,) bias of vocab entries [start, end) in `dtype`: a view when already in it."""
    return weight[start:end].to(dtype), None if bias is None else bias[start:end].to(dtype)


def _block_logits(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """(m, H) x (v, H) -> (m, v) logits."""
    return h @ w.T if b is None else torch.addmm(b, h, w.T)


class _HiddenLogps(torch.autograd.Function):
    """(B, S, H) hidden, (V, H) weight, (V,) bias or None, M (b, t) rows and their targets
    -> (M,) log p(target), (M,) row logit sums (not differentiable).

    Saves the inputs (no copies) and the (M,) logsumexps; backward recomputes the logits block by block.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, batch_idx, pos_idx, targets, row_step: int, vocab_step: int,
                log_sum_sq: bool = False):
        # Under autocast (a bf16 Trainer) the matmuls below would run in bf16: keep them in float32.
        with torch.autocast(hidden.device.type, enabled=False):
            return _HiddenLogps._forward(ctx, hidden, weight, bias, batch_idx, pos_idx, targets, row_step, vocab_step,
                                         log_sum_sq)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, batch_idx, pos_idx, targets, row_step: int, vocab_step: int,
                 log_sum_sq: bool):
        dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        h = hidden[batch_idx, pos_idx].to(dtype)  # (M, H); advanced indexing copies
        n_rows, vocab = targets.numel(), weight.shape[0]
        logsumexp = h.new_full((n_rows,), float("-inf"))
        picked = h.new_zeros(n_rows)
        row_sums = h.new_zeros(n_rows)
        lse2 = h.new_full((n_rows,), float("-inf")) if log_sum_sq else h.new_zeros(n_rows)
        for v0 in range(0, vocab, vocab_step):
            v1 = min(v0 + vocab_step, vocab)
            w, b = _vocab_block(weight, bias, v0, v1, dtype)
            local = targets - v0  # target's column within this block, if it falls in it
            inside = (local >= 0) & (local < v1 - v0)
            local = local.clamp(0, v1 - v0 - 1)
            for r0 in range(0, n_rows, row_step):
                r1 = min(r0 + row_step, n_rows)
                logits = _block_logits(h[r0:r1], w, b)  # (m, v)
                # Online logsumexp over vocab blocks: lse(a ++ b) = logaddexp(lse(a), lse(b)).
                logsumexp[r0:r1] = torch.logaddexp(logsumexp[r0:r1], torch.logsumexp(logits, dim=-1))
                hit = logits.gather(1, local[r0:r1, None]).squeeze(1)
                picked[r0:r1] += torch.where(inside[r0:r1], hit, 0)
                row_sums[r0:r1] += logits.sum(dim=-1)
                if log_sum_sq:  # online logsumexp(2 z), for log sum_v p_v^2 = lse(2z) - 2 lse(z)
                    lse2[r0:r1] = torch.logaddexp(lse2[r0:r1], torch.logsumexp(2 * logits, dim=-1))
        ctx.save_for_backward(hidden, weight, bias, batch_idx, pos_idx, targets, logsumexp)
        ctx.steps = (row_step, vocab_step)
        if log_sum_sq:
            lse2 = lse2 - 2 * logsumexp
        ctx.mark_non_differentiable(row_sums, lse2)
        return picked - logsumexp, row_sums, lse2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps: Tensor, _grad_sums: Tensor | None, _grad_lse2: Tensor | None):
        with torch.autocast(grad_logps.device.type, enabled=False):
            return _HiddenLogps._backward(ctx, grad_logps)

    @staticmethod
    def _backward(ctx, grad_logps: Tensor):
        hidden, weight, bias, batch_idx, pos_idx, targets, logsumexp = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        row_step, vocab_step = ctx.steps
        dtype = logsumexp.dtype
        n_rows, vocab = targets.numel(), weight.shape[0]
        h = hidden[batch_idx, pos_idx].to(dtype)  # (M, H)
        g = grad_logps.to(dtype)  # (M,)
        grad_h = h.new_zeros(h.shape) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        grad_bias = torch.empty_like(bias) if need_bias else None
        for v0 in range(0, vocab, vocab_step):
            v1 = min(v0 + vocab_step, vocab)
            w, b = _vocab_block(weight, bias, v0, v1, dtype)
            local = targets - v0
            inside = (local >= 0) & (local < v1 - v0)
            local = local.clamp(0, v1 - v0 - 1)
            # Accumulated in float32 over all row chunks and rounded once to the weight's dtype.
            grad_w = h.new_zeros(w.shape) if need_weight else None  # (v, H)
            grad_b = h.new_zeros(v1 - v0) if need_bias else None  # (v,)
            for r0 in range(0, n_rows, row_step):
                r1 = min(r0 + row_step, n_rows)
                gr = g[r0:r1, None]  # (m, 1)
                # G = g * (onehot(label) - softmax), the gradient of g * log p w.r.t. this block's logits.
                grad_logits = _block_logits(h[r0:r1], w, b)  # (m, v)
                grad_logits.sub_(logsumexp[r0:r1, None]).exp_().mul_(-gr)
                grad_logits.scatter_add_(1, local[r0:r1, None], torch.where(inside[r0:r1, None], gr, 0))
                if grad_h is not None:
                    grad_h[r0:r1].addmm_(grad_logits, w)  # (m, v) @ (v, H)
                if grad_w is not None:
                    grad_w.addmm_(grad_logits.T, h[r0:r1])  # (v, m) @ (m, H)
                if grad_b is not None:
                    grad_b += grad_logits.sum(dim=0)
            if grad_weight is not None:
                grad_weight[v0:v1] = grad_w
            if grad_bias is not None:
                grad_bias[v0:v1] = grad_b
        grad_hidden = None
        if grad_h is not None:
            grad_hidden = torch.zeros_like(hidden)
            grad_hidden[batch_idx, pos_idx] = grad_h.to(hidden.dtype)  # each (b, t) at most once
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _pass_hidden_states(hidden_states: Tensor) -> Tensor:
    return hidden_states


@contextlib.contextmanager
def hidden_states_as_logits(model: nn.Module) -> Iterator[nn.Linear]:
    """While active, the causal LM's output embedding returns its input: `model(...).logits` is (B, S, H).

    model: a Hugging Face causal LM, bare, PEFT-wrapped, or inside DDP / DeepSpeed (found through
    `.module`); call the wrapper as usual inside the block so gradient sync keeps working. Do not pass
    `labels` (the model's own loss would read hidden states as logits) nor `logits_to_keep` (it slices the
    sequence before the head; `hidden_logps` then refuses the shape).
    Yields the real head (nn.Linear) for its weight and bias. Only the head instance's `forward` attribute
    is set, so parameters, state_dict keys and hooks stay as they are; it is removed (or the one there
    before, e.g. accelerate's, is put back) on exit, also on exception.
    Raises ValueError where the lean path would compute something else than the model: a config that
    transforms the logits after the head (Gemma softcapping, Cohere logit_scale, ...), a head that is not
    a plain nn.Linear (a LoRA-adapted or modules_to_save head), a ZeRO-3 partitioned head weight (only
    gathered inside the head's forward), DDP with find_unused_parameters=True (it would see the head as
    unused at forward time and reduce its gradient before hidden_logps makes it).
    """
    inner = model
    while isinstance(getattr(inner, "module", None), nn.Module):  # DDP, DeepSpeed engine
        if getattr(inner, "find_unused_parameters", False):
            raise ValueError(
                "hidden_states_as_logits needs DistributedDataParallel(find_unused_parameters=False): the "
                "head's weight is used after the forward, by hidden_logps"
            )
        inner = inner.module
    _refuse_post_head_transforms(getattr(inner, "config", None))
    head = inner.get_output_embeddings()
    if type(head) is not nn.Linear:
        raise ValueError(
            f"the output embedding is a {type(head).__name__}, not a plain nn.Linear: hidden_logps would skip "
            "whatever it does besides `hidden @ weight.T + bias` (adapt the head with LoRA or modules_to_save "
            "only without the lean path)"
        )
    if hasattr(head.weight, "ds_id"):
        raise ValueError("the head's weight is partitioned by DeepSpeed ZeRO-3; use ZeRO-1/2 with the lean path")
    previous = head.__dict__.get("forward")
    if previous is _pass_hidden_states:
        raise RuntimeError("hidden_states_as_logits is already active on this model")
    head.forward = _pass_hidden_states
    try:
        yield head
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def _refuse_post_head_transforms(config) -> None:
    if config is None:
        return
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config(decoder=True))
    configs += [getattr(config, name, None) for name in getattr(config, "sub_configs", {})]
    for sub in configs:
        for key, neutral in _POST_HEAD_CONFIG_KEYS.items():
            value = getattr(sub, key, neutral)
            if value is not None and value != neutral:
                raise ValueError(
                    f"{type(sub).__name__}.{key} = {value!r} transforms the logits after the output embedding; "
                    "hidden_logps computes plain `hidden @ weight.T` log-probs, so use sequence_logps on the "
                    "model's logits instead"
                )
