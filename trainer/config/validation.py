"""Checks on a typed config beyond each field's type: ranges, combinations, files that must exist.

Every check runs at parse time, before a model or dataset loads, and raises one ConfigError naming the key.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from trainer.config.coerce import as_list
from trainer.config.lf_compat import LF_ONLY_STAGES
from trainer.config.lf_keys import check_lf_surface
from trainer.config.schema import (
    FINETUNING_TYPES,
    SUPPORTED_STAGES,
    ModelArguments,
    RayArguments,
    TrainConfig,
)
from trainer.errors import ConfigError
from trainer.losses.config_checks import check_losses
from trainer.model_source import PINNED_REVISION

CACHE_URI_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss")
"""URI schemes `ref_cache_dir` may name: the filesystems `pyarrow.fs.FileSystem.from_uri` opens."""


def validate(cfg: TrainConfig) -> None:
    ft, data, model, training = cfg.finetuning, cfg.data, cfg.model, cfg.training
    if ft.stage in LF_ONLY_STAGES:
        raise ConfigError(
            f"stage {ft.stage!r} is not supported: prefsweep runs the preference stages "
            f"{list(SUPPORTED_STAGES)} (use LLaMA-Factory for pt/sft/rm/ppo)"
        )
    if ft.stage not in SUPPORTED_STAGES:
        raise ConfigError(f"stage {ft.stage!r} is unknown; use one of {list(SUPPORTED_STAGES)}")
    if ft.finetuning_type not in FINETUNING_TYPES:
        raise ConfigError(f"finetuning_type {ft.finetuning_type!r} is not one of {list(FINETUNING_TYPES)}")
    if not model.model_name_or_path:
        raise ConfigError("model_name_or_path is required")
    _validate_remote_code(model)
    spec = check_losses(ft, lora=ft.finetuning_type == "lora")  # pref_loss, its weights, hparams, modifiers
    if ft.pref_beta <= 0:
        raise ConfigError(f"pref_beta must be > 0, got {ft.pref_beta}")
    if ft.pref_ftx < 0:
        raise ConfigError(f"pref_ftx must be >= 0, got {ft.pref_ftx}")
    if model.ref_model and not spec.needs_reference:
        raise ConfigError(f"ref_model is set but pref_loss {ft.loss_name!r} is reference-free; remove ref_model")
    for key in ("kto_chosen_weight", "kto_rejected_weight"):
        if getattr(ft, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(ft, key)}")
    if ft.lora_rank < 1:
        raise ConfigError(f"lora_rank must be >= 1, got {ft.lora_rank}")
    if ft.lora_alpha is not None and ft.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha must be > 0 or null (2 * lora_rank), got {ft.lora_alpha}")
    if not 0 <= ft.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {ft.lora_dropout}")
    cache_dir = ft.ref_cache_dir or ""
    if "://" in cache_dir and cache_dir.partition("://")[0] not in CACHE_URI_SCHEMES:
        raise ConfigError(f"ref_cache_dir {ft.ref_cache_dir!r}: a path, or a URI of one of "
                          f"{', '.join(CACHE_URI_SCHEMES)} (filesystems pyarrow.fs opens)")
    if ft.logps_chunk_size is not None and ft.logps_chunk_size < 1:
        raise ConfigError(f"logps_chunk_size must be >= 1 or null, got {ft.logps_chunk_size}")
    if data.cutoff_len < 2:
        raise ConfigError(f"cutoff_len must be >= 2 (one prompt and one response token), got {data.cutoff_len}")
    if data.max_samples is not None and data.max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {data.max_samples}")
    if data.val_size < 0 or (data.val_size >= 1 and not float(data.val_size).is_integer()):
        raise ConfigError(f"val_size must be a fraction in [0, 1) or a whole count, got {data.val_size}")
    if not data.dataset and training.get("do_train", True) is not False:
        raise ConfigError("dataset is required (a name from dataset_dir/dataset_info.json)")
    from trainer.data.dataset_info import get_dataset_attr

    for name in as_list(data.dataset) + as_list(data.eval_dataset):
        get_dataset_attr(name, data.dataset_dir)
    if data.template is not None:
        from trainer.data.templates import TEMPLATES, unknown_template_error

        if data.template not in TEMPLATES:
            raise unknown_template_error(data.template)
    if data.tokenized_path is not None and Path(data.tokenized_path).is_file():
        raise ConfigError(f"tokenized_path {data.tokenized_path!r} is a file; it names a folder (saved or to save)")
    eval_strategy = str(training.get("eval_strategy", "no"))
    if eval_strategy not in ("no", "IntervalStrategy.NO") and not data.eval_dataset and not data.val_size:
        raise ConfigError(f"eval_strategy is {eval_strategy!r} but there is no eval_dataset and val_size is 0")
    if data.eval_dataset and data.val_size:
        raise ConfigError("val_size and eval_dataset are both set; use one way to get evaluation data")
    from trainer.generation import validate_generation_keys

    validate_generation_keys(cfg)
    _validate_ray(cfg.ray)
    check_lf_surface(cfg)
    _validate_training(training)
    _validate_output_dir(cfg)
    try:
        cfg.training_arguments(device_independent=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid training arguments: {' '.join(str(err).split())}") from None  # one line




def _validate_remote_code(model: ModelArguments) -> None:
    """trust_remote_code runs Python from the checkpoint: only at a reviewed commit, named by its full sha.

    A branch or tag ("main", "v1.0") can be moved after review and serve new code; a 40-hex git commit sha
    cannot. Local directories are held to the same rule: the sha records which reviewed commit they hold.
    """
    if model.trust_remote_code and not PINNED_REVISION.fullmatch(model.model_revision):
        from trainer.model_source import CHECK_FILES, check_remote_code, resolve_model

        try:  # a model that ships no code (no auto_map) loads natively: one warning, no refusal
            folder = resolve_model(model.model_name_or_path, revision=model.model_revision,
                                   cache_dir=model.cache_dir, patterns=CHECK_FILES)
        except ConfigError:
            folder = None  # not readable here: whether it ships code cannot be checked
        if folder is not None:
            check_remote_code(folder, model.model_revision, key="model_name_or_path", name=model.model_name_or_path)
            return
        raise ConfigError(
            f"trust_remote_code is true but model_revision is {model.model_revision!r}, not a pinned commit: "
            f"remote code runs with your privileges, so add `model_revision: <the full 40-character commit "
            f"sha you reviewed>` (a branch or tag can change under you), or remove `trust_remote_code: true` "
            f"(models transformers supports natively, e.g. Llama, Qwen2, Mistral, Gemma, never need it)"
        )


def _validate_ray(ray: RayArguments) -> None:
    if ray.num_workers < 1:
        raise ConfigError(f"ray.num_workers must be >= 1, got {ray.num_workers}")
    if ray.max_failures < -1:
        raise ConfigError(f"ray.max_failures must be >= 0, or -1 to retry forever, got {ray.max_failures}")
    if ray.report_every_steps < 0:
        raise ConfigError(f"ray.report_every_steps must be >= 0 (0: about 8 reports per run), got {ray.report_every_steps}")
    if ray.num_to_keep is not None and ray.num_to_keep < 1:
        raise ConfigError(f"ray.num_to_keep must be >= 1 or null (keep all), got {ray.num_to_keep}")
    for name, amount in (ray.resources_per_worker or {}).items():
        if amount < 0:
            raise ConfigError(f"ray.resources_per_worker.{name} must be >= 0, got {amount}")


# TrainingArguments keys whose bad values transformers accepts silently (or meets with an unnamed error).
_POSITIVE_TRAINING_KEYS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "save_steps",
    "logging_steps",
    "eval_steps",
)


def _validate_training(training: dict[str, Any]) -> None:
    for key in _POSITIVE_TRAINING_KEYS:
        value = training.get(key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    max_steps = training.get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"max_steps must be > 0, or -1 to train for num_train_epochs, got {max_steps}")
    if training.get("learning_rate", 0.0) < 0:
        raise ConfigError(f"learning_rate must be >= 0, got {training['learning_rate']}")
    deepspeed = training.get("deepspeed")
    if isinstance(deepspeed, str) and not _is_deepspeed_config(deepspeed):
        raise ConfigError(f"deepspeed: {deepspeed} is not a file (give a DeepSpeed JSON config path or a mapping)")


def _is_deepspeed_config(value: str) -> bool:
    """What TrainingArguments takes as a string: a JSON file, or a JSON object inline or base64-encoded."""
    if Path(value).is_file():
        return True
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        pass
    try:
        return isinstance(json.loads(base64.b64decode(value, validate=True).decode()), dict)
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False


def _validate_output_dir(cfg: TrainConfig) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    out = cfg.output_dir
    resume = cfg.training.get("resume_from_checkpoint")
    if not out.is_dir() or cfg.training.get("do_train", True) is False:
        return
    last = get_last_checkpoint(str(out))
    if last is None:
        return
    if resume is None and not cfg.finetuning.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {out} holds checkpoint {Path(last).name}; set resume_from_checkpoint: true "
            f"(or a checkpoint path) to resume, or overwrite_output_dir: true to start over"
        )

