"""Every LLaMA-Factory 0.9.5 argument a dpo/kto config can carry, and what prefsweep does with it.

Three kinds, besides the keys `schema.py` types itself (honoured under LF's own name) and Hugging Face
`TrainingArguments` (honoured by transformers):
- MAPPED: LF's flat Ray keys (and the older `resources_per_worker`, `placement_strategy`,
  `ray_storage_path`, `ray_run_name`) move into the `ray:` section;
- REFUSED: LF features prefsweep does not have. The LF default value is accepted (it asks for nothing,
  so configs that spell defaults out still parse); any other value is one ConfigError saying why.
- LF_TRAINING_EXTRAS: LF's own additions to TrainingArguments (profiler, fp8), refused the same way.
`docs/lf_config_keys.md` is generated from these tables (`markdown_table`) and a test keeps it current.
"""

from __future__ import annotations

from typing import Any

from trainer.errors import ConfigError

HONOURED = (
    "model_name_or_path", "ref_model", "model_revision", "trust_remote_code", "cache_dir",
    "template", "dataset", "eval_dataset", "dataset_dir", "cutoff_len", "max_samples", "val_size",
    "overwrite_cache", "preprocessing_num_workers", "mix_strategy", "interleave_probs", "default_system",
    "enable_thinking", "preserve_thinking", "tokenized_path",
    "stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
    "freeze_trainable_layers", "freeze_trainable_modules", "pref_beta", "pref_loss", "pref_ftx", "simpo_gamma",
    "dpo_label_smoothing", "kto_chosen_weight", "kto_rejected_weight", "ld_alpha", "plot_loss",
    "overwrite_output_dir",
)
"""LF keys typed in `schema.py` under the same name and meaning."""
# TrainingArguments LF's dpo/kto examples use, honoured by transformers; where prefsweep adds to it, the note says.
EXAMPLE_TRAINING_KEYS = {
    "do_train": "", "output_dir": "", "logging_steps": "", "save_steps": "", "per_device_train_batch_size": "",
    "gradient_accumulation_steps": "", "learning_rate": "", "num_train_epochs": "", "lr_scheduler_type": "",
    "per_device_eval_batch_size": "", "eval_strategy": "", "eval_steps": "", "deepspeed": "",
    "warmup_ratio": "transformers 5 dropped it: becomes warmup_steps (a value < 1 is a ratio)",
    "save_only_model": "checkpoints hold no optimizer state, so they cannot be resumed",
    "resume_from_checkpoint": "true: the last complete checkpoint of output_dir; or a checkpoint path",
    "dataloader_num_workers": "worker processes of the training DataLoader",
    "report_to": "mlflow is recorded by prefsweep itself; other integrations must be installed (checked at parse)",
    "ddp_timeout": "the process group timeout of Ray Train's TorchConfig (Ray Train opens the group)",
    "bf16": "without a GPU it trains on the CPU (use_cpu), which supports bf16",
    "fp16": "needs a GPU: refused at parse time for a CPU run, with what to change",
}

MAPPED = {
    "ray_num_workers": ("num_workers", "Ray Train workers per run"),
    "ray_init_kwargs": ("init_kwargs", "passed to `ray.init` (a local Ray; attaching: runtime_env and the like)"),
    "resources_per_worker": ("resources_per_worker", "Ray resources per worker (LF <= 0.9.4 key)"),
    "placement_strategy": ("placement_strategy", "PACK / SPREAD / STRICT_PACK / STRICT_SPREAD (LF <= 0.9.4)"),
    "ray_storage_path": ("storage_path", "where Ray Train keeps results (LF <= 0.9.4 key)"),
    "ray_run_name": ("run_name", "name of the Ray Train run of `prefsweep train` (LF <= 0.9.4 key)"),
}

_TEXT_ONLY = "prefsweep trains text-only preference data (no images, video or audio)"
_INFERENCE = "prefsweep trains; generation, inference engines and export are LLaMA-Factory's (`llamafactory-cli`)"
_QUANT = "quantized training (QLoRA, bitsandbytes/GPTQ/AWQ) is not supported; train full, freeze or LoRA weights"
_OPTIM = "only transformers' optimizers (`optim`) are supported; GaLore, APOLLO, BAdam, Adam-mini, Muon are not"
_PPO = "stage ppo/rm is LLaMA-Factory's; prefsweep runs dpo and kto"
_ADAPTERS = ("LoRA variants and existing adapters are not supported (plain LoRA on the base weights); merge an "
             "adapter into the model first")
_KERNELS = "custom kernels and model patches are not supported; transformers' own modules run"
_SWANLAB = "SwanLab is not supported; runs are recorded in MLflow (MLFLOW_TRACKING_URI)"
_SFT = "an SFT-only option; it has no meaning for dpo/kto"

REFUSED: dict[str, tuple[Any, str]] = {
    # ModelArguments
    "adapter_name_or_path": (None, _ADAPTERS),
    "adapter_folder": (None, _ADAPTERS),
    "use_fast_tokenizer": (True, "only fast (Rust) tokenizers are supported"),
    "resize_vocab": (False, "vocabulary changes are not supported: token ids must match the reference model's"),
    "split_special_tokens": (False, "special tokens are never split (as LF's default)"),
    "add_tokens": (None, "vocabulary changes are not supported: token ids must match the reference model's"),
    "add_special_tokens": (None, "vocabulary changes are not supported: token ids must match the reference's"),
    "new_special_tokens_config": (None, "vocabulary changes are not supported"),
    "init_special_tokens": ("noise_init", "vocabulary changes are not supported"),
    "low_cpu_mem_usage": (True, "weights always load lazily (transformers 5); false is not supported"),
    "rope_scaling": (None, "RoPE scaling is not supported; set it in the model's config.json"),
    "flash_attn": ("auto", "the attention implementation is transformers' default (sdpa)"),
    "shift_attn": (False, _KERNELS),
    "mixture_of_depths": (None, _KERNELS),
    "use_unsloth": (False, _KERNELS),
    "use_unsloth_gc": (False, _KERNELS),
    "enable_liger_kernel": (False, _KERNELS),
    "use_v1_kernels": (False, _KERNELS),
    "use_kt": (False, _KERNELS),
    "kt_weight_path": (None, _KERNELS),
    "kt_expert_checkpoint_path": (None, _KERNELS),
    "kt_use_lora_experts": (None, _KERNELS),
    "kt_lora_expert_num": (None, _KERNELS),
    "kt_lora_expert_intermediate_size": (None, _KERNELS),
    "moe_aux_loss_coef": (None, "MoE router auxiliary loss is not added to preference losses"),
    "disable_gradient_checkpointing": (frozenset({False, True}), "prefsweep checkpoints activations only with `gradient_checkpointing:"
                                              " true` (TrainingArguments); either value is accepted and means that"),
    "use_reentrant_gc": (True, "set `gradient_checkpointing_kwargs: {use_reentrant: false}` instead"),
    "upcast_layernorm": (False, _KERNELS),
    "upcast_lmhead_output": (False, "log-probs are always computed in float32 (lean_head)"),
    "train_from_scratch": (False, "preference training starts from trained weights"),
    "infer_backend": ("huggingface", _INFERENCE),
    "offload_folder": ("offload", "disk offload is not supported (use DeepSpeed ZeRO-3 offload)"),
    "use_kv_cache": (True, "training never uses the KV cache"),
    "infer_dtype": ("auto", _INFERENCE),
    "hf_hub_token": (None, "set HF_TOKEN in the environment of every node instead (configs are logged)"),
    "ms_hub_token": (None, "ModelScope is not supported (Hugging Face hub only)"),
    "om_hub_token": (None, "Modelers (OpenMind) is not supported (Hugging Face hub only)"),
    "print_param_status": (False, "not supported; the trainable parameter count is logged at start"),
    "quantization_method": ("bnb", _QUANT),
    "quantization_bit": (None, _QUANT),
    "quantization_type": ("nf4", _QUANT),
    "double_quantization": (True, _QUANT),
    "quantization_device_map": (None, _QUANT),
    **dict.fromkeys(
        ("image_max_pixels", "image_min_pixels", "image_do_pan_and_scan", "crop_to_patches", "video_max_pixels",
         "video_min_pixels", "video_fps", "video_maxlen", "use_audio_in_video", "audio_sampling_rate"), None),
    **dict.fromkeys(
        ("export_dir", "export_size", "export_device", "export_quantization_bit", "export_quantization_dataset",
         "export_quantization_nsamples", "export_quantization_maxlen", "export_legacy_format",
         "export_hub_model_id", "vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager", "vllm_max_lora_rank",
         "vllm_config", "sglang_maxlen", "sglang_mem_fraction", "sglang_tp_size", "sglang_config",
         "sglang_lora_backend"), None),
    # DataArguments
    "media_dir": (None, _TEXT_ONLY),
    "train_on_prompt": (False, "dpo/kto never train on the prompt (LF's pairwise and feedback processors ignore it)"),
    "mask_history": (False, "dpo/kto label only the response (LF's pairwise and feedback processors ignore it)"),
    "streaming": (False, "the data is tokenized once into a cache the workers share and the reference log-prob "
                         "cache keys; cap large sets with max_samples"),
    "buffer_size": (16384, "a streaming option; streaming is not supported"),
    "preprocessing_batch_size": (1000, "tokenization maps 1000 rows per batch, LF's default"),
    "eval_num_beams": (None, _INFERENCE),
    "ignore_pad_token_for_loss": (True, "padding never counts in the loss"),
    "eval_on_each_dataset": (False, "eval_dataset is evaluated as one merged set"),
    "packing": (None, "pairs are not packed (chosen and rejected share one padded batch)"),
    "neat_packing": (False, "pairs are not packed"),
    "tool_format": (None, "tool calls are not supported in preference data"),
    "data_shared_file_system": (False, "not needed: every worker reads one content-keyed tokenized cache"),
    # FinetuningArguments
    "freeze_extra_modules": (None, "freeze tuning trains freeze_trainable_modules of the chosen layers only"),
    "additional_target": (None, _ADAPTERS),
    "module_dropout": (0.0, _ADAPTERS),
    "oft_rank": (0, "OFT is not supported"),
    "oft_block_size": (32, "OFT is not supported"),
    "oft_target": ("all", "OFT is not supported"),
    "create_new_adapter": (False, _ADAPTERS),
    "loraplus_lr_ratio": (None, _ADAPTERS),
    "loraplus_lr_embedding": (1e-06, _ADAPTERS),
    "use_rslora": (False, _ADAPTERS),
    "use_dora": (False, _ADAPTERS),
    "pissa_init": (False, _ADAPTERS),
    "pissa_iter": (16, _ADAPTERS),
    "pissa_convert": (False, _ADAPTERS),
    "pref_bco_weight": (0.0, "use `pref_loss: [sigmoid, bco_pair]` with pref_loss_weights instead"),
    **dict.fromkeys(("ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards",
                     "reward_model", "reward_model_adapters", "reward_model_quantization_bit",
                     "reward_model_type"), None),
    "ref_model_adapters": (None, _ADAPTERS),
    "ref_model_quantization_bit": (None, _QUANT),
    **dict.fromkeys(("use_galore", "galore_target", "galore_rank", "galore_update_interval", "galore_scale",
                     "galore_proj_type", "galore_layerwise", "use_apollo", "apollo_target", "apollo_rank",
                     "apollo_update_interval", "apollo_scale", "apollo_proj", "apollo_proj_type",
                     "apollo_scale_type", "apollo_layerwise", "apollo_scale_front", "use_badam", "badam_mode",
                     "badam_start_block", "badam_switch_mode", "badam_switch_interval", "badam_update_ratio",
                     "badam_mask_mode", "badam_verbose", "use_adam_mini", "use_muon"), None),
    **dict.fromkeys(("use_swanlab", "swanlab_project", "swanlab_workspace", "swanlab_run_name", "swanlab_mode",
                     "swanlab_api_key", "swanlab_logdir", "swanlab_lark_webhook_url", "swanlab_lark_secret"), None),
    "pure_bf16": (False, "bf16 weights come with `bf16: true`; pure bf16 (no fp32 master weights) is not supported"),
    "use_llama_pro": (False, "LLaMA Pro block expansion is not supported"),
    "use_mca": (False, "Megatron-Core (mcore_adapter) is not supported; use DeepSpeed"),
    "use_hyper_parallel": (False, "hyper-parallel training is not supported; use DeepSpeed"),
    "hyper_parallel_args": (None, "hyper-parallel training is not supported"),
    "use_dft_loss": (False, _SFT),
    "use_asft_loss": (False, _SFT),
    "asft_alpha": (0.1, _SFT),
    "use_eaft_loss": (False, _SFT),
    "eaft_alpha": (1.0, _SFT),
    "freeze_vision_tower": (True, _TEXT_ONLY),
    "freeze_multi_modal_projector": (True, _TEXT_ONLY),
    "freeze_language_model": (False, _TEXT_ONLY),
    "compute_accuracy": (False, _SFT + " (dpo/kto log rewards/accuracies)"),
    "disable_shuffling": (False, "training order is the seeded shuffle (or group_by_length); not configurable"),
    "early_stopping_steps": (None, "early stopping is a sweep's job (scheduler: asha)"),
    "include_effective_tokens_per_second": (False, "not supported; padding_fraction is logged instead"),
    # RayArguments
    "master_addr": (None, "Ray Train sets up the process group itself"),
    "master_port": (None, "Ray Train sets up the process group itself"),
}
# Groups whose entries above carry None: (their LF defaults, why).
_DEFAULTS = {
    "image_max_pixels": 589824, "image_min_pixels": 1024, "image_do_pan_and_scan": False, "crop_to_patches": False,
    "video_max_pixels": 65536, "video_min_pixels": 256, "video_fps": 2.0, "video_maxlen": 128,
    "use_audio_in_video": False, "audio_sampling_rate": 16000,
    "export_size": 5, "export_device": "cpu", "export_quantization_nsamples": 128, "export_quantization_maxlen": 1024,
    "export_legacy_format": False, "vllm_maxlen": 4096, "vllm_gpu_util": 0.7, "vllm_enforce_eager": False,
    "vllm_max_lora_rank": 32, "sglang_maxlen": 4096, "sglang_mem_fraction": 0.7, "sglang_tp_size": -1,
    "sglang_lora_backend": "triton",
    "ppo_buffer_size": 1, "ppo_epochs": 4, "ppo_score_norm": False, "ppo_target": 6.0, "ppo_whiten_rewards": False,
    "reward_model_type": "lora",
    "use_galore": False, "galore_target": "all", "galore_rank": 16, "galore_update_interval": 200,
    "galore_scale": 2.0, "galore_proj_type": "std", "galore_layerwise": False, "use_apollo": False,
    "apollo_target": "all", "apollo_rank": 16, "apollo_update_interval": 200, "apollo_scale": 32.0,
    "apollo_proj": "random", "apollo_proj_type": "std", "apollo_scale_type": "channel", "apollo_layerwise": False,
    "apollo_scale_front": False, "use_badam": False, "badam_mode": "layer", "badam_switch_mode": "ascending",
    "badam_switch_interval": 50, "badam_update_ratio": 0.05, "badam_mask_mode": "adjacent", "badam_verbose": 0,
    "use_adam_mini": False, "use_muon": False,
    "use_swanlab": False, "swanlab_project": "llamafactory", "swanlab_mode": "cloud",
}
_GROUP_REASONS = [
    (_TEXT_ONLY, ("image_", "video_", "crop_to_patches", "use_audio_in_video", "audio_sampling_rate")),
    (_INFERENCE, ("export_", "vllm_", "sglang_")),
    (_PPO, ("ppo_", "reward_model")),
    (_OPTIM, ("galore_", "apollo_", "badam_", "use_galore", "use_apollo", "use_badam", "use_adam_mini",
              "use_muon")),
    (_SWANLAB, ("swanlab_", "use_swanlab")),
]
for _key, _entry in list(REFUSED.items()):
    if _entry is None:
        _why = next(why for why, prefixes in _GROUP_REASONS if _key.startswith(prefixes))
        REFUSED[_key] = (_DEFAULTS.get(_key), _why)

_PROFILER = "the torch profiler is not wired in; profile with benchmarks/ray_overhead.py --profile"
LF_TRAINING_EXTRAS: dict[str, tuple[Any, str]] = {
    "fp8": (False, "fp8 training is not supported"),
    "fp8_backend": ("auto", "fp8 training is not supported"),
    "fp8_enable_fsdp_float8_all_gather": (False, "fp8 training is not supported"),
    "enable_torch_profiler": (False, _PROFILER),
    "profiler_output_dir": (None, _PROFILER),
    "profiler_wait_steps": (1, _PROFILER),
    "profiler_warmup_steps": (1, _PROFILER),
    "profiler_active_steps": (1, _PROFILER),
    "profiler_repeat": (1, _PROFILER),
    "profiler_record_shapes": (True, _PROFILER),
    "profiler_profile_memory": (True, _PROFILER),
    "profiler_with_stack": (True, _PROFILER),
    "profile_modules": (None, _PROFILER),
}


def lf_key_names() -> list[str]:
    return list(MAPPED) + list(REFUSED) + list(LF_TRAINING_EXTRAS)


def map_lf_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of the flat raw config: LF's Ray keys moved into `ray:` (an explicit `ray:` value wins over
    nothing: both set is an error), unsupported LF keys at their LF default dropped, any other value of
    them a ConfigError naming the key and why."""
    raw = dict(raw)
    for key, (target, _) in MAPPED.items():
        if key in raw:
            value = raw.pop(key)
            section = dict(raw.get("ray") or {})
            if target in section and section[target] != value:
                raise ConfigError(f"{key}: {value!r} conflicts with ray.{target}: {section[target]!r}; set one")
            section[target] = value
            raw["ray"] = section
    for table in (REFUSED, LF_TRAINING_EXTRAS):
        for key, (default, why) in table.items():
            if key in raw:
                value = raw.pop(key)
                accepted = default if isinstance(default, frozenset) else {default}
                if value not in accepted and value is not None:
                    raise ConfigError(f"{key}: {value!r} is not supported by prefsweep: {why}")
    return raw


def _refused_status(default: Any) -> str:
    if isinstance(default, frozenset):
        return "accepted (no effect)"
    return f"refused unless `{default!r}`" if default is not None else "refused unless unset"


def markdown_table(honoured: dict[str, str], training_keys: dict[str, str]) -> str:
    """docs/lf_config_keys.md: `honoured` maps the schema keys LF also has to their doc line."""
    lines = [
        "# LLaMA-Factory 0.9.5 config keys in prefsweep (stages dpo and kto)",
        "",
        "Generated from `trainer/config/lf_keys.py` and `trainer/config/schema.py`; "
        "`tests/test_lf_config_keys.py` keeps it current.",
        "A refused key is accepted at its LLaMA-Factory default value (it asks for nothing); any other",
        "value is an error naming the key and the reason. Every other Hugging Face `TrainingArguments` key is",
        "honoured by transformers; the rows marked TrainingArguments are those LLaMA-Factory's examples use.",
        "",
        "| key | status | note |",
        "|---|---|---|",
    ]
    rows = [(k, "honoured", doc) for k, doc in honoured.items()]
    rows += [(k, "honoured (TrainingArguments)", note) for k, note in training_keys.items()]
    rows += [(k, f"mapped to `ray.{target}`", note) for k, (target, note) in MAPPED.items()]
    rows += [(k, _refused_status(default), why) for k, (default, why) in {**REFUSED, **LF_TRAINING_EXTRAS}.items()]
    for key, status, note in sorted(rows):
        lines.append(f"| `{key}` | {status} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# report_to integrations -> the module transformers needs for them
_REPORTERS = {"wandb": "wandb", "tensorboard": "tensorboard", "swanlab": "swanlab", "comet_ml": "comet_ml",
              "clearml": "clearml", "dvclive": "dvclive", "neptune": "neptune", "trackio": "trackio",
              "codecarbon": "codecarbon", "aim": "aim", "flyte": "flytekit", "dagshub": "dagshub"}


def check_lf_surface(cfg) -> None:
    """Checks of the LF keys whose values meet each other or the machine: mixing, Ray init, precision,
    report_to. (Key-by-key checks are in `map_lf_keys` and `validation`.)"""
    import importlib.util

    from trainer.config.coerce import as_list

    data, training = cfg.data, cfg.training
    if data.interleave_probs is not None:
        if data.mix_strategy == "concat":
            raise ConfigError("interleave_probs is set but mix_strategy is concat; set mix_strategy: "
                              "interleave_under or interleave_over")
        try:
            probs = [float(p) for p in as_list(data.interleave_probs)]
        except ValueError:
            raise ConfigError(f"interleave_probs: {data.interleave_probs!r} must be comma-separated numbers") from None
        count = len(as_list(data.dataset))
        if len(probs) != count or any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ConfigError(f"interleave_probs: {probs} must be {count} non-negative numbers (one per dataset) "
                              f"summing to 1")
    if "address" in (cfg.ray.init_kwargs or {}):
        raise ConfigError("ray_init_kwargs / ray.init_kwargs: address is not taken here; set RAY_ADDRESS")
    on_cpu = (not cfg.ray.use_gpu) if cfg.use_ray else not _cuda()
    if training.get("fp16") and on_cpu:
        raise ConfigError("fp16: true needs a GPU (fp16 mixed precision has no CPU path); on CPU use bf16: true "
                          "or fp16: false" + (", or ray.use_gpu: true on a GPU cluster" if cfg.use_ray else ""))
    for name in as_list(training.get("report_to")):
        module = _REPORTERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {name} is not installed (pip install {module}); prefsweep records "
                              f"every run in MLflow itself (MLFLOW_TRACKING_URI), or use report_to: none")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def render_docs() -> str:
    """The text of docs/lf_config_keys.md."""
    from trainer.config.schema import field_docs

    docs = field_docs()
    return markdown_table({k: docs.get(k, "") for k in HONOURED}, EXAMPLE_TRAINING_KEYS)


if __name__ == "__main__":  # python -m trainer.config.lf_keys > docs/lf_config_keys.md
    print(render_docs(), end="")
