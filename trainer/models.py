"""Tokenizer, policy (full / LoRA / freeze) and reference model, from local folders or the hub cache.

Reference, as LLaMA-Factory builds it: a separate `ref_model` if given; else the LoRA policy with its
adapters disabled (no second copy); else, for full and freeze tuning, a frozen copy of the starting
weights; none at all for reference-free losses (orpo, simpo). With a reference log-prob cache
(`trainer.ref_cache`) none is built either: the batches carry the reference log-probs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainer.config.schema import FinetuningArguments, ModelArguments
from trainer.errors import ConfigError
from trainer.model_source import resolve_model, trust_remote_code


def _local_folder(name: str, model_args: ModelArguments, key: str) -> str:
    """The model's local folder (a hub id through the hub cache); one ConfigError line when there is none."""
    return resolve_model(name, revision=model_args.model_revision, cache_dir=model_args.cache_dir, key=key)


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """Right-padded tokenizer (the collator pads responses on the right, as LLaMA-Factory does)."""
    folder = _local_folder(model_args.model_name_or_path, model_args, "model_name_or_path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder,
            trust_remote_code=trust_remote_code(folder, model_args.trust_remote_code),
            padding_side="right",
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the tokenizer of {model_args.model_name_or_path!r} from {folder}: "
                          f"{' '.join(str(err).split())[:300]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, model_args: ModelArguments, dtype: torch.dtype,
                   key: str = "model_name_or_path") -> PreTrainedModel:
    """Load safetensors weights only (never pickle); dropout off, no KV cache."""
    folder = _local_folder(path, model_args, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            trust_remote_code=trust_remote_code(folder, model_args.trust_remote_code),
            dtype=dtype,
            use_safetensors=True,
        )
    except OSError as err:
        raise ConfigError(f"cannot load model {path!r} (safetensors weights are required): "
                          f"{' '.join(str(err).split())[:300]}") from None
    model.config.use_cache = False
    disable_dropout(model)
    return model


def disable_dropout(model: nn.Module) -> None:
    """Dropout makes policy and reference disagree on identical weights; preference training turns it off
    everywhere (LLaMA-Factory and TRL do the same, LoRA dropout included)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_policy(model_args: ModelArguments, ft: FinetuningArguments, dtype: torch.dtype) -> nn.Module:
    model = load_causal_lm(model_args.model_name_or_path, model_args, dtype)
    if ft.finetuning_type == "lora":
        return _apply_lora(model, ft)
    if ft.finetuning_type == "freeze":
        _apply_freeze(model, ft)
    return model


def _apply_lora(model: PreTrainedModel, ft: FinetuningArguments) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = [t.strip() for t in ft.lora_target.split(",") if t.strip()]
    target_modules: str | list[str] = "all-linear" if targets == ["all"] else targets
    if target_modules != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(f"lora_target {missing} not found in the model; its linear modules are {linear}")
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=ft.lora_rank,
        lora_alpha=ft.lora_alpha if ft.lora_alpha is not None else ft.lora_rank * 2,
        lora_dropout=ft.lora_dropout,
        target_modules=target_modules,
    )
    model = get_peft_model(model, config)
    for param in model.parameters():
        if param.requires_grad:  # adapters train in fp32 even on bf16 weights
            param.data = param.data.float()
    disable_dropout(model)
    return model


def _apply_freeze(model: PreTrainedModel, ft: FinetuningArguments) -> None:
    """Train only the last `freeze_trainable_layers` decoder layers (first -N if negative), as LLaMA-Factory."""
    num_layers = model.config.num_hidden_layers
    k = ft.freeze_trainable_layers
    layer_ids = range(max(0, num_layers - k), num_layers) if k > 0 else range(min(-k, num_layers))
    modules = [m.strip() for m in ft.freeze_trainable_modules.split(",") if m.strip()]
    patterns = [f".{i}." + ("" if modules == ["all"] else m) for i in layer_ids for m in modules]
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in patterns))
        trainable += param.requires_grad
    if trainable == 0:
        raise ConfigError(
            f"freeze_trainable_layers={k} with freeze_trainable_modules={ft.freeze_trainable_modules!r} "
            f"leaves no trainable parameter"
        )


@dataclass
class Reference:
    """How reference log-probs are computed. `model` is None for adapters-off, cached and reference-free."""

    kind: str  # "none" | "separate" | "adapters_off" | "frozen_copy" | "cached" | "self"
    model: nn.Module | None = None

    @property
    def needed(self) -> bool:
        return self.kind != "none"

    @contextlib.contextmanager
    def forward_model(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The module to run for reference log-probs (under no_grad): `policy` is the unwrapped policy."""
        if self.kind == "adapters_off":
            with policy.disable_adapter():
                yield policy
        elif self.kind == "self":
            yield policy
        elif self.model is not None:
            yield self.model
        elif self.kind == "cached":
            raise RuntimeError("the reference log-probs come from the cache: no reference forward should run")
        else:
            raise RuntimeError("this loss is reference-free: no reference forward should run")


def build_reference(
    model_args: ModelArguments, ft: FinetuningArguments, policy: nn.Module, *, needs_reference: bool, dtype,
    cached: bool = False, training: bool = True,
) -> Reference:
    """`cached`: the reference log-probs are joined to the dataset; no model is loaded or copied.

    Evaluation only (`training=False`) of full/freeze weights with no `ref_model`: the starting weights
    *are* the model, so the reference is the model itself (no copy) and reward metrics mean nothing;
    the workflow drops them, as LLaMA-Factory does.
    """
    if not needs_reference:
        return Reference("none")
    if cached:
        return Reference("cached")
    if not training and not model_args.ref_model and ft.finetuning_type != "lora":
        return Reference("self")
    if model_args.ref_model:
        ref = load_causal_lm(model_args.ref_model, model_args, dtype, key="ref_model")
    elif ft.finetuning_type == "lora":
        return Reference("adapters_off")
    elif _zero3_enabled():
        # ZeRO-3 partitioned the policy while it loaded: a deepcopy would copy empty shards. Load the
        # starting weights again (partitioned the same way); the trainer wraps them with DeepSpeed.
        ref = load_causal_lm(model_args.model_name_or_path, model_args, dtype)
    else:
        ref = copy.deepcopy(policy)  # the starting weights, before any optimizer step
    ref.eval()
    ref.requires_grad_(False)
    return Reference("separate" if model_args.ref_model else "frozen_copy", ref)


def _zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def prepare_deepspeed_reference(model: nn.Module, ds_config: dict) -> nn.Module:
    """Wrap a frozen reference with DeepSpeed for inference: sharded like the policy under ZeRO-3 (its
    forward gathers each layer's shards), plain (stage 0) otherwise. As TRL's `prepare_deepspeed`."""
    import deepspeed

    config = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    hidden = getattr(model.config, "hidden_size", None) or 1024
    sizes = {  # what transformers fills in for "auto" once it knows the model (as TRL does)
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    if zero.get("stage") != 3:
        zero["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def compute_dtype(training: dict) -> torch.dtype:
    """Weights dtype: bf16 runs load bf16 weights (as LLaMA-Factory); fp16 runs keep fp32 master weights
    for the grad scaler."""
    return torch.bfloat16 if training.get("bf16") else torch.float32
