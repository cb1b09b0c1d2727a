"""What runs inside each measured subprocess of `benchmarks.step_throughput` (`--worker VARIANT`): one peer's
training (prefsweep with or without the reference cache, LLaMA-Factory, TRL) timed by the shared step meter,
or the cache build. Standard library only at module level: the LLaMA-Factory peer runs it in its own venv."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks._common import write_json

VARIANTS = ("prefsweep", "prefsweep_cache", "llamafactory", "llamafactory_default", "trl")
LF_VARIANTS = ("llamafactory", "llamafactory_default")
CACHE_BUILD_IN_RUN = "prefsweep_cache_build"
"""`precompute_ref: always` on an empty cache root of its own: the run builds its cache (with the policy
itself) and trains on it, as a single `prefsweep train` does; its loop is the cached loop."""
CACHE_BUILD_IN_RUN_GC = "prefsweep_cache_build_gc"
"""The same with `gradient_checkpointing: true`: the memory setting LLaMA-Factory runs by default."""


def prefsweep_config(spec: dict, output_dir: str, precompute_ref: str, *, private_cache: bool = False,
                     **overrides) -> dict:
    # A private cache root: the build is a real miss and the cached runs real hits.
    cache = str(Path(output_dir) / "ref_cache") if private_cache else spec["ref_cache_dir"]
    return {**spec["config"], "output_dir": output_dir, "use_ray": False, "precompute_ref": precompute_ref,
            "ref_cache_dir": cache, **overrides}


def profile_regions(variant: str) -> list[str]:
    """Label the peer's main functions for `--profile` runs; returns the targets that were not found."""
    from transformers.models.llama import modeling_llama

    from benchmarks._profiling import label_functions

    targets = [(modeling_llama.LlamaModel, "forward", "backbone forward")]
    if variant.startswith("prefsweep"):
        import trainer.lean_head
        import trainer.preference_trainer as pt

        targets += [
            (pt, "hidden_logps", "lean head forward"),
            (trainer.lean_head._HiddenLogps, "_backward", "lean head backward"),
            (pt.PreferenceTrainer, "_reference_logps", "reference forward"),
            (pt.PreferenceTrainer, "_store", "metrics"),
        ]
    elif variant in LF_VARIANTS:
        import llamafactory.train.dpo.trainer as lf

        targets += [
            (modeling_llama.LlamaForCausalLM, "forward", "LM head forward"),
            (lf, "get_batch_logps", "log-softmax + gather"),
            (lf.CustomDPOTrainer, "compute_reference_log_probs", "reference forward"),
        ]
    elif variant == "trl":
        from trl.kernels import ChunkedLogProbFunction

        targets += [
            (ChunkedLogProbFunction, "forward", "chunked log-prob forward"),
            (ChunkedLogProbFunction, "backward", "chunked log-prob backward"),
        ]
    return label_functions(targets)


def step_meter(spec: dict):
    from benchmarks._common import make_step_meter

    return make_step_meter(spec["device"], profile_after=spec["warmup"] if spec.get("profile") else None)


def worker_prefsweep(spec: dict, output_dir: str, precompute_ref: str, *, private_cache: bool = False,
                     **overrides) -> dict:
    """`spec["whole_run"]`: the whole `run_training` (saves the model, state and metrics, as LLaMA-Factory's
    `run_exp` does), else `build_trainer` + `train()`."""
    from trainer.config import load_config
    from trainer.workflow import build_trainer, run_training

    meter = step_meter(spec)
    cfg = load_config(prefsweep_config(spec, output_dir, precompute_ref, private_cache=private_cache, **overrides))
    if spec.get("whole_run"):
        result = run_training(cfg, [meter])
        cache = result.ref_cache
        in_training = result.reference_forwards - (cache.get("reference_forwards") or 0)
    else:
        trainer, facts = build_trainer(cfg, [meter])
        trainer.train()
        cache, in_training = facts["ref_cache"].as_dict(), trainer.reference_forwards
    return {**meter.summary(spec["warmup"]), "reference_forwards_in_training": in_training,
            "ref_cache": {k: cache.get(k) for k in ("status", "reason", "build_seconds", "reference_forwards")}}


def worker_cache_build(spec: dict, output_dir: str) -> dict:
    """Build the reference cache the `prefsweep_cache` runs read; timed here, not in the steps."""
    from trainer.config import load_config
    from trainer.ref_cache import ensure_reference_cache

    cfg = load_config(prefsweep_config(spec, output_dir, "always"))
    start = time.perf_counter()
    info = ensure_reference_cache(cfg)
    seconds = time.perf_counter() - start
    if info.status != "miss":
        raise RuntimeError(f"expected to build the reference cache, got status {info.status!r} ({info.reason})")
    return {"build_seconds": seconds, "status": info.status, "reference_forwards": info.reference_forwards,
            "cache_build_seconds_reported": info.build_seconds}


def worker_llamafactory(spec: dict, output_dir: str, *, gradient_checkpointing: bool) -> dict:
    from llamafactory.train.tuner import run_exp

    meter = step_meter(spec)
    config = {**spec["config"], "output_dir": output_dir,
              "disable_gradient_checkpointing": not gradient_checkpointing}
    run_exp(config, callbacks=[meter])
    return meter.summary(spec["warmup"])


def worker_trl(spec: dict, output_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on rows that already hold prompt_ids / chosen_ids / rejected_ids: skip its tokenizer."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    cfg = spec["config"]
    rows = json.loads(Path(spec["pairs_file"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_name_or_path"])
    peft_config = None
    if cfg.get("finetuning_type") == "lora":  # LLaMA-Factory's `lora_target: all` = every linear but the head
        from peft import LoraConfig

        if cfg.get("lora_target") != "all":
            raise ValueError("the TRL peer maps only lora_target: all (peft's all-linear)")
        peft_config = LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg.get("lora_alpha") or 2 * cfg["lora_rank"],
                                 lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    dtype = torch.bfloat16 if spec["device"] == "cuda" else torch.float32
    args = DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=cfg["learning_rate"],
        max_steps=cfg["max_steps"],
        logging_steps=cfg["logging_steps"],
        save_strategy="no",
        report_to="none",
        seed=cfg["seed"],
        beta=cfg["pref_beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        gradient_checkpointing=False,
        bf16=spec["device"] == "cuda",
        max_length=cfg["cutoff_len"],
        pad_to_multiple_of=8,
        remove_unused_columns=False,
        model_init_kwargs={"dtype": dtype},
    )
    meter = step_meter(spec)
    trainer = PretokenizedDPOTrainer(
        model=cfg["model_name_or_path"],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[meter],
        peft_config=peft_config,
    )
    trainer.train()
    if spec.get("whole_run"):
        trainer.save_model()
    return meter.summary(spec["warmup"])


def run_worker(variant: str, spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    missing = profile_regions(variant) if spec.get("profile") and variant != "cache_build" else []
    with tempfile.TemporaryDirectory(prefix=f"st-{variant}-") as output_dir:
        if variant == "prefsweep":
            result = worker_prefsweep(spec, output_dir, "never")
            if not result["reference_forwards_in_training"]:
                raise RuntimeError("the uncached run ran no reference forward")
        elif variant == "prefsweep_cache":
            result = worker_prefsweep(spec, output_dir, "always")
            if result["ref_cache"]["status"] != "hit" or result["reference_forwards_in_training"]:
                raise RuntimeError(f"the cached run did not read the prebuilt cache: {result['ref_cache']}")
        elif variant in (CACHE_BUILD_IN_RUN, CACHE_BUILD_IN_RUN_GC):
            result = worker_prefsweep(spec, output_dir, "always", private_cache=True,
                                      **({"gradient_checkpointing": True} if variant == CACHE_BUILD_IN_RUN_GC else {}))
            if result["ref_cache"]["status"] != "miss" or result["reference_forwards_in_training"]:
                raise RuntimeError(f"the run did not build its own cache and train on it: {result['ref_cache']}")
        elif variant == "cache_build":
            result = worker_cache_build(spec, output_dir)
        elif variant in LF_VARIANTS:
            result = worker_llamafactory(spec, output_dir, gradient_checkpointing=variant == "llamafactory_default")
        elif variant == "trl":
            result = worker_trl(spec, output_dir)
        else:
            raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS + (CACHE_BUILD_IN_RUN, CACHE_BUILD_IN_RUN_GC, 'cache_build')}")
    if missing:
        result["profile_regions_missing"] = missing
    write_json(out_path, {"variant": variant, **result})
    return 0
