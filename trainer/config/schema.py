"""The typed config tree: every key a user can write, with its type, default and one-line doc.

Add a config key here with one field (and its docstring line); parsing, overrides, unknown-key
suggestions and help text pick it up from the dataclass. Checks that go beyond the type belong in
`validation.py`; keys LLaMA-Factory users write under an old name belong in `lf_compat.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.config.coerce import as_list
from trainer.losses.config_checks import combined_name

SUPPORTED_STAGES = ("dpo", "kto")
FINETUNING_TYPES = ("full", "lora", "freeze")
RESOLVED_CONFIG_NAME = "resolved_config.yaml"
"""Written into output_dir by every run: the config it ran, as flat YAML."""
REF_CACHE_NAME = "ref_cache.json"
"""Written into output_dir by every run: what happened to its reference cache, with the MLflow tags."""


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """Local directory or hub id (through the hub cache: HF_HOME, HF_HUB_OFFLINE) of the policy's start."""
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
    """Comma-separated names from `dataset_dir/dataset_info.json`, or TRL-format files / folders / hub ids."""
    eval_dataset: str | None = None
    """Comma-separated dataset names evaluated instead of a `val_size` split."""
    dataset_dir: str = "data"
    """Folder holding `dataset_info.json` and the data files, or `REMOTE:<hub dataset repo>` holding one."""
    template: str | None = None
    """LLaMA-Factory template name (qwen3_nothink, llama3, gemma3 ...); unset: the tokenizer's chat_template."""
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
    enable_thinking: bool | None = True
    """Reasoning templates: true trains the (empty) thought block, false/null keeps it in the prompt."""
    preserve_thinking: bool = False
    """Reasoning templates: keep the thought blocks of earlier assistant turns (dropped by default)."""
    default_system: str | None = None
    """Replaces the template's default system prompt."""
    tokenized_path: str | None = None
    """Folder of the tokenized dataset: saved there when absent, loaded from it when present."""
    tokenized_cache: bool = False
    """Tokenize once for every run with the same data, tokenizer, template, cutoff_len and stage: the tokenized
    sets are kept under `<reference cache root>/tokenized/` (`trainer.data.token_cache`). A sweep turns it on
    for its trials unless the base config says otherwise; `tokenized_path` takes precedence."""
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat"
    """How several datasets merge: concatenated, or interleaved until the first (under) or last (over) runs out."""
    interleave_probs: str | list[float] | None = None
    """Comma-separated sampling probability of each dataset when interleaving (default: equal)."""


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
    pref_loss: str | list[str] = "sigmoid"
    """Paired loss for stage dpo, or a list of them combined (e.g. [sigmoid, bco_pair, sft])."""
    pref_loss_weights: list[float] | None = None
    """Weight of each loss of a pref_loss list (TRL's loss_weights; default 1 each)."""
    pref_ftx: float = 0.0
    """Weight of the SFT term -avg log p(chosen) added to the preference loss."""
    simpo_gamma: float | None = None
    """SimPO target reward margin; only with pref_loss simpo (default 0.5)."""
    gamma_beta_ratio: float | None = None
    """SimPO's gamma / beta (the paper's parametrisation), instead of simpo_gamma."""
    discopop_tau: float = 0.05
    """DiscoPOP temperature tau; only with pref_loss discopop."""
    cpo_alpha: float = 1.0
    """Weight of CPO's NLL term; only with pref_loss cpo."""
    f_divergence_type: str = "reverse_kl"
    """f-DPO regulariser: reverse_kl, forward_kl, js_divergence or alpha_divergence."""
    f_alpha_divergence_coef: float = 0.5
    """alpha of f_divergence_type alpha_divergence."""
    ld_alpha: float | None = None
    """LD-DPO: weight in [0, 1] of the tokens beyond the shorter response of each pair."""
    use_weighting: bool = False
    """WPO: weight each pair by the policy's length-normalised probabilities of its responses."""
    sync_ref_model: bool = False
    """TR-DPO: mix the policy into the reference every ref_model_sync_steps steps (full/freeze only)."""
    ref_model_mixup_alpha: float = 0.6
    """TR-DPO: reference <- alpha * policy + (1 - alpha) * reference."""
    ref_model_sync_steps: int = 512
    """TR-DPO: optimizer steps between reference updates."""
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
    """Root of the reference log-prob cache: a filesystem path or a URI (s3://, gs://: pyarrow.fs, no shared filesystem needed); default <ray.storage_path>/ref_cache, else ~/.cache/prefsweep/ref_cache."""
    eval_generate: int = 0
    """At the end of training (at every evaluation with eval_generate_every_eval), sample answers to the first N eval prompts from the policy and the reference (seeded, fixed settings; `trainer.generation`); 0: off."""
    eval_generate_every_eval: bool = False
    """Also generate at every evaluation during training (metrics per eval step, a `step` column in the table), not only at the end."""
    eval_generate_max_new_tokens: int = 48
    """Most new tokens per generated answer."""
    eval_reward_model: str | None = None
    """Sequence-classification reward model (path or hub id) that scores the generations: eval_reward/mean, eval_reward/win_rate_vs_ref (unused while eval_generate is 0)."""

    @property
    def loss_name(self) -> str:
        return "kto" if self.stage == "kto" else combined_name(self.pref_loss)


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
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How a run's workers are placed on nodes (Ray's placement group strategy)."""
    run_name: str | None = None
    """Name of the Ray Train run of `prefsweep train` (default: the output dir's name); sweeps name trials."""
    init_kwargs: dict[str, Any] | None = None
    """Extra `ray.init` keywords (e.g. runtime_env, num_cpus for a local Ray); not `address` (use RAY_ADDRESS)."""
    report_every_steps: int = 0
    """Training logs go to Ray Train (`ray.train.report`, a barrier of every worker) at most every this many
    optimizer steps; evaluations, checkpoints and the last step always. 0: about 8 per run (see
    `rayjobs.worker.report_interval`). MLflow still gets every logged step."""


@dataclass
class TrainConfig:
    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    ray: RayArguments
    training: dict[str, Any]
    """Hugging Face TrainingArguments keywords, validated; build with `training_arguments()`."""
    use_ray: bool = True
    given: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """The flat keys as written (YAML plus overrides, before defaults); `with_overrides` derives from them."""

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
        kwargs["report_to"] = [r for r in as_list(kwargs.get("report_to")) if r not in ("mlflow", "none")] or "none"
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
