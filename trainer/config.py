"""One validated config tree from a LLaMA-Factory-style YAML plus `KEY=VALUE` overrides.

The YAML is flat, as LLaMA-Factory users write it (`model_name_or_path`, `pref_beta`, `learning_rate`, ...);
only `ray:` is a nested section. Each key belongs to exactly one group below or to Hugging Face
`TrainingArguments`. Unknown keys are errors naming the key and the nearest valid one. Every check
runs here, before any model or dataset loads.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import enum
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.errors import ConfigError
from trainer.losses import get_loss, loss_names

SUPPORTED_STAGES = ("dpo", "kto")
LF_ONLY_STAGES = ("pt", "sft", "rm", "ppo")
FINETUNING_TYPES = ("full", "lora", "freeze")
RESOLVED_CONFIG_NAME = "resolved_config.yaml"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """Local directory (or hub id, for users with a hub) of the policy's starting weights."""
    ref_model: str | None = None
    """Separate reference model; default: LoRA policy with adapters off, or a frozen copy of the start."""
    model_revision: str = "main"
    """Revision (branch, tag or commit) of the model to load; a full commit sha with trust_remote_code."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off by default; needs model_revision pinned to a commit sha."""
    cache_dir: str | None = None
    """Where downloaded models are cached."""


@dataclass
class DataArguments:
    dataset: str | None = None
    """Comma-separated dataset names from `dataset_dir/dataset_info.json`."""
    eval_dataset: str | None = None
    """Comma-separated dataset names evaluated instead of a `val_size` split."""
    dataset_dir: str = "data"
    """Folder holding `dataset_info.json` and the data files."""
    template: str | None = None
    """Named chat template (default, empty, chatml, llama3, qwen); unset: the tokenizer's own chat_template."""
    cutoff_len: int = 2048
    """Maximum tokens per sequence (prompt + response), split between them as LLaMA-Factory does."""
    max_samples: int | None = None
    """Keep at most this many examples per dataset."""
    val_size: float = 0.0
    """Fraction (< 1) or count (>= 1) of the training data held out for evaluation."""
    overwrite_cache: bool = False
    """Recompute the tokenized dataset instead of reusing the `datasets` cache."""
    preprocessing_num_workers: int | None = None
    """Processes used to tokenize."""
    strict_data: bool = False
    """Raise on the first bad row (naming file and row) instead of skipping bad rows with a count."""


@dataclass
class FinetuningArguments:
    stage: str = "dpo"
    """Training stage: dpo (paired losses) or kto (unpaired)."""
    finetuning_type: str = "lora"
    """full, lora or freeze."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: int | None = None
    """LoRA alpha; default 2 * lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_target: str = "all"
    """Comma-separated module names to adapt, or `all` for every linear layer but the LM head."""
    freeze_trainable_layers: int = 2
    """freeze: train the last N layers (negative: the first -N)."""
    freeze_trainable_modules: str = "all"
    """freeze: comma-separated module names inside the trainable layers, or `all`."""
    pref_beta: float = 0.1
    """beta of the preference loss (temperature of the implicit reward)."""
    pref_loss: str = "sigmoid"
    """Paired loss for stage dpo."""
    pref_ftx: float = 0.0
    """Weight of the SFT term -avg log p(chosen) added to the preference loss."""
    simpo_gamma: float | None = None
    """SimPO target reward margin; only with pref_loss simpo (default 0.5)."""
    dpo_label_smoothing: float = 0.0
    """Conservative DPO label smoothing eps in [0, 0.5); only with pref_loss sigmoid."""
    kto_chosen_weight: float = 1.0
    """KTO weight of desirable examples."""
    kto_rejected_weight: float = 1.0
    """KTO weight of undesirable examples."""
    plot_loss: bool = False
    """Write PNG curves of loss, eval_loss and rewards/accuracies into output_dir."""
    overwrite_output_dir: bool = False
    """Start over in an output_dir that holds checkpoints (dropped by transformers 5; kept here)."""
    logps_chunk_size: int | None = 1024
    """Response positions per chunk when computing log-probs; bounds the memory of the log-softmax."""
    lean_head: bool = True
    """Compute log-probs from the last hidden states and the LM head in chunks, never the full logits."""
    precompute_ref: Literal["auto", "always", "never"] = "auto"
    """Reference log-prob cache: auto reads one that exists for this run's key (a sweep builds it before its trials), always builds or reuses one before training, never runs the reference every step."""
    ref_cache_dir: str | None = None
    """Root of the reference log-prob cache (a filesystem path); default <ray.storage_path>/ref_cache, else ~/.cache/prefsweep/ref_cache."""
    eval_generate: int = 0
    """At the end of training, sample answers to the first N eval prompts from the policy and the reference (seeded, fixed settings; `trainer.generation`); 0: off."""
    eval_generate_max_new_tokens: int = 48
    """Most new tokens per generated answer."""
    eval_reward_model: str | None = None
    """Sequence-classification reward model (path or hub id) that scores the generations: eval_reward/mean, eval_reward/win_rate_vs_ref."""

    @property
    def loss_name(self) -> str:
        return "kto" if self.stage == "kto" else self.pref_loss


@dataclass
class RayArguments:
    num_workers: int = 1
    """Ray Train workers per run (DDP)."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: dict[str, float] | None = None
    """Ray resources per worker, e.g. {CPU: 4, GPU: 1}."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints and results (local path or cloud URI)."""
    num_to_keep: int | None = None
    """Checkpoints kept by Ray Train (None: all)."""
    max_failures: int = 0
    """Worker-group restarts allowed before the run fails."""


@dataclass
class TrainConfig:
    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    ray: RayArguments
    training: dict[str, Any]
    """Hugging Face TrainingArguments keywords, validated; build with `training_arguments()`."""
    use_ray: bool = True

    @property
    def loss_name(self) -> str:
        return self.finetuning.loss_name

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def training_arguments(self, *, device_independent: bool = False):
        """A fresh `transformers.TrainingArguments` (built inside each worker so distributed env is seen).

        `device_independent`: leave out the precision flags, which transformers checks against this
        machine's devices; a CPU-only driver validates a GPU sweep's config this way.
        """
        from transformers import TrainingArguments

        kwargs = dict(self.training)
        if device_independent:
            for key in ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval"):
                kwargs.pop(key, None)
        # prefsweep records MLflow itself (rayjobs/); the collator needs every column.
        kwargs["report_to"] = [r for r in _as_list(kwargs.get("report_to")) if r not in ("mlflow", "none")] or "none"
        kwargs["remove_unused_columns"] = False
        kwargs.pop("resume_from_checkpoint", None)  # resolved by resolve_resume(); may be `true`
        # Every trainable parameter takes part in each step; DDP's unused-parameter search only costs time
        # (and the lean LM head uses the head weight outside its module's forward).
        kwargs.setdefault("ddp_find_unused_parameters", False)
        return TrainingArguments(**kwargs)

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved config as the flat YAML users write (plus the nested `ray:` section)."""
        flat: dict[str, Any] = {}
        for group in (self.model, self.data, self.finetuning):
            flat.update(dataclasses.asdict(group))
        flat.update(self.training)
        flat["use_ray"] = self.use_ray
        flat["ray"] = dataclasses.asdict(self.ray)
        return flat

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_flat_dict(), sort_keys=False)


GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "finetuning": FinetuningArguments,
}

# Keys LLaMA-Factory users still write that transformers 5 dropped or renamed: old key -> handler.
LEGACY_KEYS = {
    "warmup_ratio": "warmup_steps",  # transformers 5: warmup_steps < 1 is a ratio
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
}
# Boolean keys transformers 5 turned into a choice: old flag -> (new key, the choice `true` stands for).
LEGACY_FLAGS = {"group_by_length": ("train_sampling_strategy", "group_by_length")}
IGNORED_LEGACY_KEYS = {
    "logging_dir": "transformers 5 removed it; logs go to output_dir",
    "save_safetensors": "weights are always saved as safetensors",
}
FORCED_TRAINING_KEYS = {"remove_unused_columns"}


def _training_fields() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def valid_keys() -> list[str]:
    keys = [f.name for g in GROUPS.values() for f in dataclasses.fields(g)]
    legacy = list(LEGACY_KEYS) + list(LEGACY_FLAGS) + list(IGNORED_LEGACY_KEYS)
    return keys + list(_training_fields()) + ["use_ray", "ray"] + legacy


def _unknown_key_error(key: str, candidates: list[str], where: str = "") -> ConfigError:
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {where}{key!r}{hint}")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field's type; accept ints for floats and strings only where typed so."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and set(args) - set(enums) <= {str, type(None)}:  # HF's `SomeEnum | str` choice fields
            return _coerce(key, value, enums[0])
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if errors else ConfigError(f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `5e-6` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every `< 0` check below
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [member.value for member in annotation]
        if isinstance(value, bool) and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            value = "no" if value is False else value
        if isinstance(value, annotation) or value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if origin in (dict, list) or annotation in (dict, list):
        expected = origin or annotation
        if expected is dict and isinstance(value, dict) and len(args) == 2:  # check each value, keep numbers
            checked = {k: _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
            return {k: v if isinstance(v, (int, float)) else checked[k] for k, v in value.items()}
        if isinstance(value, expected):
            return value
        if expected is list and isinstance(value, str):
            return _as_list(value)
        raise ConfigError(f"{key}: expected a {expected.__name__}, got {value!r}")
    return value  # enums and other HF types: TrainingArguments converts and validates them


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (`0.1` -> float, `true` -> bool, `null` -> None)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Merge overrides into a raw flat config; `ray.num_workers=2` sets a key of the `ray:` section."""
    merged = dict(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        if key.startswith("ray."):
            section = dict(merged.get("ray") or {})
            section[key[4:]] = value
            merged["ray"] = section
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of config keys, got {type(raw).__name__}")
    return raw


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] = ()) -> TrainConfig:
    """Parse and validate a config (YAML path or raw dict) plus overrides; raises ConfigError."""
    raw = read_yaml(source) if not isinstance(source, dict) else dict(source)
    raw = apply_overrides(raw, overrides)
    where = f"{source}: " if not isinstance(source, dict) else ""
    try:
        return _build(raw)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def _build(raw: dict[str, Any]) -> TrainConfig:
    raw = dict(raw)
    for old, new in LEGACY_KEYS.items():
        if old in raw:
            value = raw.pop(old)
            if raw.get(new) in (None, 0, 0.0, False):
                raw[new] = value
    for old, (new, choice) in LEGACY_FLAGS.items():
        if old in raw:
            on = _coerce(old, raw.pop(old), bool)
            given = raw.get(new)
            if given is not None and (given == choice) != on:
                raise ConfigError(f"{old}: {str(on).lower()} conflicts with {new}: {given}; set one of them")
            if on:
                raw[new] = choice
    for old in IGNORED_LEGACY_KEYS:
        raw.pop(old, None)

    training_types = _training_fields()
    group_values: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    field_group = {f.name: (name, f) for name, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    group_hints = {name: typing.get_type_hints(cls) for name, cls in GROUPS.items()}
    training: dict[str, Any] = {}
    ray_raw = raw.pop("ray", None) or {}
    use_ray = _coerce("use_ray", raw.pop("use_ray", True), bool)

    for key, value in raw.items():
        if key in field_group:
            group, f = field_group[key]
            group_values[group][key] = _coerce(key, value, group_hints[group][key])
        elif key == "resume_from_checkpoint":
            if value is not None and not isinstance(value, (bool, str)):
                raise ConfigError(f"resume_from_checkpoint: expected true, false or a path, got {value!r}")
            training[key] = value
        elif key in training_types:
            training[key] = _coerce(key, value, training_types[key])
        else:
            raise _unknown_key_error(key, valid_keys())

    if not isinstance(ray_raw, dict):
        raise ConfigError(f"ray: must be a mapping of Ray settings, got {ray_raw!r}")
    ray_hints = typing.get_type_hints(RayArguments)
    ray_values = {}
    for key, value in ray_raw.items():
        if key not in ray_hints:
            raise _unknown_key_error(key, list(ray_hints), where="ray.")
        ray_values[key] = _coerce(f"ray.{key}", value, ray_hints[key])

    model = ModelArguments(**group_values["model"])
    data = DataArguments(**group_values["data"])
    finetuning = FinetuningArguments(**group_values["finetuning"])
    ray = RayArguments(**ray_values)
    training.setdefault("output_dir", "outputs/run")
    cfg = TrainConfig(model=model, data=data, finetuning=finetuning, ray=ray, training=training, use_ray=use_ray)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
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
    if ft.stage == "dpo":
        if ft.pref_loss not in loss_names("dpo"):
            try:
                get_loss(ft.pref_loss)
            except ValueError as err:
                raise ConfigError(f"pref_loss: {err}") from None
            raise ConfigError(f"pref_loss {ft.pref_loss!r} is not a paired loss; stage dpo takes {loss_names('dpo')}")
    spec = get_loss(ft.loss_name)
    if ft.pref_beta <= 0:
        raise ConfigError(f"pref_beta must be > 0, got {ft.pref_beta}")
    if ft.pref_ftx < 0:
        raise ConfigError(f"pref_ftx must be >= 0, got {ft.pref_ftx}")
    if ft.simpo_gamma is not None and ft.loss_name != "simpo":
        raise ConfigError(f"simpo_gamma is only used by pref_loss simpo, but pref_loss is {ft.loss_name!r}")
    if ft.loss_name == "simpo" and ft.simpo_gamma is None:
        ft.simpo_gamma = 0.5  # LLaMA-Factory's default
    if not 0 <= ft.dpo_label_smoothing < 0.5:
        raise ConfigError(f"dpo_label_smoothing must be in [0, 0.5), got {ft.dpo_label_smoothing}")
    if ft.dpo_label_smoothing > 0 and ft.loss_name != "sigmoid":
        raise ConfigError(
            f"dpo_label_smoothing is only used by pref_loss sigmoid, but pref_loss is {ft.loss_name!r}"
        )
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
    if ft.ref_cache_dir is not None and "://" in ft.ref_cache_dir:
        raise ConfigError(
            f"ref_cache_dir must be a local or shared filesystem path (atomic renames), got {ft.ref_cache_dir!r}"
        )
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

    for name in _as_list(data.dataset) + _as_list(data.eval_dataset):
        get_dataset_attr(name, data.dataset_dir)
    if data.template is not None:
        from trainer.data.templates import TEMPLATES

        if data.template not in TEMPLATES:
            near = difflib.get_close_matches(data.template, list(TEMPLATES), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"template {data.template!r} is unknown{hint}; known: {sorted(TEMPLATES)}")
    eval_strategy = str(training.get("eval_strategy", "no"))
    if eval_strategy not in ("no", "IntervalStrategy.NO") and not data.eval_dataset and not data.val_size:
        raise ConfigError(f"eval_strategy is {eval_strategy!r} but there is no eval_dataset and val_size is 0")
    if data.eval_dataset and data.val_size:
        raise ConfigError("val_size and eval_dataset are both set; use one way to get evaluation data")
    from trainer.generation import validate_generation_keys

    validate_generation_keys(cfg)
    _validate_ray(cfg.ray)
    _validate_training(training)
    _validate_output_dir(cfg)
    try:
        cfg.training_arguments(device_independent=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid training arguments: {' '.join(str(err).split())}") from None  # one line


PINNED_REVISION = re.compile(r"[0-9a-fA-F]{40}")


def _validate_remote_code(model: ModelArguments) -> None:
    """trust_remote_code runs Python from the checkpoint: only at a reviewed commit, named by its full sha.

    A branch or tag ("main", "v1.0") can be moved after review and serve new code; a 40-hex git commit sha
    cannot. Local directories are held to the same rule: the sha records which reviewed commit they hold.
    """
    if model.trust_remote_code and not PINNED_REVISION.fullmatch(model.model_revision):
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


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint` true -> the last COMPLETE checkpoint in
    output_dir (one with the `.complete` marker; a checkpoint cut off mid-write is skipped); a path must
    itself be complete."""
    from trainer.preference_trainer import (
        CHECKPOINT_COMPLETE,
        checkpoint_is_complete,
        last_complete_checkpoint,
    )

    resume = cfg.training.get("resume_from_checkpoint")
    if resume in (None, False, "false", "False"):
        return None
    if resume in (True, "true", "True"):
        last = last_complete_checkpoint(cfg.output_dir)
        if last is None:
            raise ConfigError(f"resume_from_checkpoint is true but {cfg.output_dir} holds no complete checkpoint")
        return last
    if not Path(resume).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {resume} is not a checkpoint directory")
    if not checkpoint_is_complete(resume):
        raise ConfigError(
            f"resume_from_checkpoint: {resume} is incomplete (no {CHECKPOINT_COMPLETE} marker: "
            f"the run was cut off while writing it)"
        )
    return str(resume)


def field_docs() -> dict[str, str]:
    """Field name -> docstring line, for help text (read from this module's source)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(inspect.getmodule(field_docs)))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    docs[a.target.id] = str(b.value.value).strip()
    return docs


__all__ = [
    "ConfigError",
    "DataArguments",
    "FinetuningArguments",
    "ModelArguments",
    "RayArguments",
    "TrainConfig",
    "load_config",
    "resolve_resume",
]
