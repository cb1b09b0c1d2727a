"""What the policy writes: seeded samples for the first N eval prompts, from the policy and the reference.

Reward accuracy says whether the policy ranks held-out pairs right; a user choosing between DPO
variants also reads what each trained policy now *writes*. At the end of training the policy answers
the first `eval_generate` prompts of the eval split, and so does the reference (the starting weights),
once per run. Every trial of a sweep uses the same prompts, the same sampling settings and the same
seeds, so a row of one trial's table sits beside the same row of another's and the difference is the
training alone.

Determinism: prompt i is sampled under `torch.manual_seed(seed + i)` inside a forked RNG, one prompt
at a time (no padding, no batch effects), so its answer does not depend on N, on the other prompts or
on the caller's RNG state. Every rank of a multi-worker run generates the same rows (sharded models,
ZeRO-3, need every rank in each forward); rank 0 reports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainer.labels import prompt_ids

GENERATIONS_NAME = "generations.json"
"""Written into the output dir by rank 0: the rows and metrics the tracking side logs as a table."""
DEFAULT_MAX_NEW_TOKENS = 48
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9


@dataclass(frozen=True)
class SamplingSettings:
    """Fixed for every trial of a sweep: the rows of two trials are comparable only if these match."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int = 0


@dataclass
class GenerationRow:
    index: int
    """Row of the eval split the prompt comes from."""
    prompt: str
    """The prompt as the template rendered it (what the model was given)."""
    policy: str
    reference: str
    policy_tokens: int
    reference_tokens: int
    policy_reward: float | None = None
    reference_reward: float | None = None
    step: int | None = None
    """Training step the policy answered at (`trainer.generation_log`); the table's first column when set."""


def eval_prompts(eval_dataset, n: int) -> list[list[int]]:
    """Prompt ids of the first `n` rows of the tokenized eval split (all of them if it has fewer)."""
    if eval_dataset is None or len(eval_dataset) == 0:
        raise ValueError("eval_generate needs an eval split (val_size or eval_dataset)")
    return [prompt_ids(eval_dataset[i]) for i in range(min(n, len(eval_dataset)))]


def _stop_ids(tokenizer) -> list[int]:
    return [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]


@torch.no_grad()
def sample(model: nn.Module, prompts: list[list[int]], tokenizer, settings: SamplingSettings) -> list[list[int]]:
    """The sampled continuation of each prompt (token ids, the stop token excluded).

    Sampling settings and per-prompt seeds as in the module docstring. The KV cache is turned on for
    the call (the trainer loads models with `use_cache=False`) and the model's mode is restored.
    """
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    was_training, use_cache = model.training, getattr(config, "use_cache", None)
    stops = _stop_ids(tokenizer)
    model.eval()
    if config is not None:
        config.use_cache = True
    outputs = []
    try:
        for i, ids in enumerate(prompts):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(settings.seed + i)
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)
                out = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                    temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                    max_new_tokens=settings.max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                )
            new = out[0, len(ids):].tolist()
            cut = next((k for k, token in enumerate(new) if token in stops), len(new))
            outputs.append(new[:cut])
    finally:
        model.train(was_training)
        if config is not None:
            config.use_cache = use_cache
    return outputs


@contextlib.contextmanager
def reference_for_generation(reference, policy: nn.Module, load_start) -> Iterator[nn.Module]:
    """The model the reference generations come from: the run's reference model when it has one (the
    policy with adapters off for LoRA), else the starting weights loaded by `load_start()` (cached,
    reference-free and evaluation-only runs hold no reference model)."""
    if reference.kind in ("adapters_off", "separate", "frozen_copy"):
        with reference.forward_model(policy) as model:
            yield getattr(model, "module", model)  # a DeepSpeed-wrapped reference: its module generates
        return
    model = load_start()
    try:
        yield model
    finally:
        del model


def mean_length(rows: list[GenerationRow], side: str) -> float:
    """Mean generated tokens per row of `side` ("policy" or "reference")."""
    return sum(getattr(r, f"{side}_tokens") for r in rows) / max(len(rows), 1)


def win_rate(policy_scores: list[float], reference_scores: list[float]) -> float:
    """Share of prompts whose policy answer outscores the reference answer; a tie counts half."""
    if len(policy_scores) != len(reference_scores) or not policy_scores:
        raise ValueError(f"win_rate needs equal, non-empty score lists ({len(policy_scores)} vs "
                         f"{len(reference_scores)})")
    wins = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores))
    return wins / len(policy_scores)


def as_table(rows: list[GenerationRow]) -> dict[str, list]:
    """Column name -> values, the shape `mlflow.log_table` takes; reward and step columns only when set."""
    records = [asdict(r) for r in rows]
    optional = ("step", "policy_reward", "reference_reward")
    columns = [k for k in records[0] if not (k in optional and records[0][k] is None)] if records else []
    columns.sort(key=lambda k: k != "step")  # stable: step first, the rest in field order
    return {k: [rec[k] for rec in records] for k in columns}


def validate_generation_keys(cfg) -> None:
    """Config checks of `eval_generate`, `eval_generate_max_new_tokens`, `eval_reward_model` (ConfigError)."""
    from trainer.errors import ConfigError

    ft, data = cfg.finetuning, cfg.data
    if ft.eval_generate < 0:
        raise ConfigError(f"eval_generate must be >= 0 (prompts to answer; 0: off), got {ft.eval_generate}")
    if ft.eval_generate and not data.eval_dataset and not data.val_size:
        raise ConfigError("eval_generate answers prompts of the eval split, but there is no eval_dataset and "
                          "val_size is 0")
    if ft.eval_generate_max_new_tokens < 1:
        raise ConfigError(f"eval_generate_max_new_tokens must be >= 1, got {ft.eval_generate_max_new_tokens}")
    # eval_reward_model without eval_generate is left unused, not refused: `eval_generate=0` is how a user
    # turns generation off for one run of a config that names a reward model


def evaluate_generations(
    trainer, cfg, settings: SamplingSettings, reference_out: list[list[int]] | None = None,
) -> tuple[list[GenerationRow], dict[str, float], list[list[int]]]:
    """Policy and reference answers to the first `eval_generate` eval prompts, scored when
    `eval_reward_model` is set; returns the rows, the metrics (`eval_generate/*`, `eval_reward/*`) and the
    reference's token ids. `reference_out`: the reference's answers from an earlier call, reused as they are."""
    from trainer.models import compute_dtype, load_causal_lm

    ft = cfg.finetuning
    tokenizer = trainer.processing_class
    prompts = eval_prompts(trainer.eval_dataset, ft.eval_generate)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    device = next(policy.parameters()).device
    policy_out = sample(policy, prompts, tokenizer, settings)

    def load_start() -> nn.Module:
        path = cfg.model.ref_model or cfg.model.model_name_or_path
        return load_causal_lm(path, cfg.model, compute_dtype(cfg.training)).to(device)

    if reference_out is None:
        with reference_for_generation(trainer.reference, policy, load_start) as reference:
            reference_out = sample(reference, prompts, tokenizer, settings)
    rows = [
        GenerationRow(
            index=i, prompt=tokenizer.decode(p, skip_special_tokens=False),
            policy=tokenizer.decode(a, skip_special_tokens=True), reference=tokenizer.decode(b, skip_special_tokens=True),
            policy_tokens=len(a), reference_tokens=len(b),
        )
        for i, (p, a, b) in enumerate(zip(prompts, policy_out, reference_out))
    ]
    metrics = {
        "eval_generate/mean_length": mean_length(rows, "policy"),
        "eval_generate/ref_mean_length": mean_length(rows, "reference"),
    }
    if ft.eval_reward_model:
        from trainer.reward_model import conversation_text, load_reward_model, score

        judge, judge_tokenizer = load_reward_model(ft.eval_reward_model, device)
        policy_scores = score(judge, judge_tokenizer, [conversation_text(tokenizer, p, a)
                                                       for p, a in zip(prompts, policy_out)])
        reference_scores = score(judge, judge_tokenizer, [conversation_text(tokenizer, p, b)
                                                          for p, b in zip(prompts, reference_out)])
        del judge
        for row, p, r in zip(rows, policy_scores, reference_scores):
            row.policy_reward, row.reference_reward = p, r
        metrics.update({
            "eval_reward/mean": sum(policy_scores) / len(policy_scores),
            "eval_reward/ref_mean": sum(reference_scores) / len(reference_scores),
            "eval_reward/win_rate_vs_ref": win_rate(policy_scores, reference_scores),
        })
    return rows, metrics, reference_out


def generations_record(rows: list[GenerationRow], metrics: dict[str, float], settings: SamplingSettings) -> dict:
    """What `generations.json` holds: the sampling settings, the metrics and the table's columns."""
    return {"settings": asdict(settings), "metrics": metrics, "table": as_table(rows)}
