"""One preference run, start to finish, inside one process (or one Ray Train worker).

YAML -> validated config -> dataset -> collator -> trainer -> callbacks -> output dir. Callbacks are
how the outside world (Ray reports, MLflow) listens; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback, set_seed

from trainer.atomic_write import write_atomic
from trainer.config import REF_CACHE_NAME, RESOLVED_CONFIG_NAME, TrainConfig, resolve_resume
from trainer.data import load_preference_data, make_collator
from trainer.final_eval import final_evaluation
from trainer.generation_log import GenerateAtEvalCallback, GenerationLog
from trainer.losses import get_loss
from trainer.models import build_reference, compute_dtype, load_policy, load_tokenizer
from trainer.phases import mark, phase_callbacks
from trainer.plotting import plot_curves
from trainer.preference_trainer import PreferenceTrainer, loss_kwargs
from trainer.ref_cache import CacheInfo, attach, prepare
from trainer.ref_cache.key import token_cache_root

logger = logging.getLogger("prefsweep")
# REF_CACHE_NAME holds the CacheInfo of the run plus its MLflow tags, for the tracking side; rewritten at
# the end with run_reference_forwards (RunResult.reference_forwards of rank 0).
TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    dataset_fingerprint: str = ""
    skipped_rows: dict[str, int] = field(default_factory=dict)
    ref_cache: dict = field(default_factory=dict)
    """`CacheInfo.as_dict()`: status hit|miss|off, key, path, build_seconds, rows, reason, reference_forwards
    (of the build); `ref_cache["tags"]` are the MLflow tags."""
    reference_forwards: int = 0
    """Examples this process passed through the reference model: cache build plus training and evaluation."""


def save_metrics(trainer: PreferenceTrainer, split: str, metrics: dict) -> None:
    """`Trainer.save_metrics` (`{split}_results.json`, merged into `all_results.json`), written atomically."""
    if not trainer.is_world_process_zero():
        return
    out = Path(trainer.args.output_dir)
    write_atomic(out / f"{split}_results.json", json.dumps(metrics, indent=4, sort_keys=True))
    combined = out / "all_results.json"
    merged = json.loads(combined.read_text(encoding="utf-8")) if combined.is_file() else {}
    merged.update(metrics)
    write_atomic(combined, json.dumps(merged, indent=4, sort_keys=True))


def save_state(trainer: PreferenceTrainer) -> None:
    """`Trainer.save_state` (`trainer_state.json`), written atomically."""
    if trainer.is_world_process_zero():
        state = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"
        write_atomic(Path(trainer.args.output_dir) / TRAINER_STATE_NAME, state)


def build_trainer(cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> tuple[PreferenceTrainer, dict]:
    """Everything up to a ready Trainer; returns it and facts about the data (fingerprint, skips)."""
    mark("build_start")
    args = cfg.training_arguments()
    set_seed(args.seed)
    spec = get_loss(cfg.loss_name)
    tokenizer = load_tokenizer(cfg.model)
    mark("tokenizer_loaded")
    with args.main_process_first(desc="tokenizing the preference data"):
        data = load_preference_data(
            cfg.data, tokenizer, stage=cfg.finetuning.stage, seed=args.seed, do_train=args.do_train,
            token_cache=token_cache_root(cfg),
        )
    dtype = compute_dtype(cfg.training)
    # One copy of the weights: a cache build whose reference is the starting policy runs the policy itself,
    # so the policy loads first; a separate ref_model is built before the policy loads, never beside it.
    policy = None if cfg.model.ref_model else load_policy(cfg.model, cfg.finetuning, dtype)
    with args.main_process_first(desc="building the reference cache"):
        # precompute_ref always: the local main process builds the cache, the others then find it.
        cache, tables = prepare(
            cfg, data, tokenizer, seed=args.seed, build=cfg.finetuning.precompute_ref == "always",
            device=args.device, policy=policy,
        )
    if tables is not None:
        data = attach(data, tables, cache.key)
        _say_unread_rows(cache, args, len(data.train) if data.train is not None else 0)
    mark("data_ready")
    if policy is None:
        policy = load_policy(cfg.model, cfg.finetuning, dtype)
    reference = build_reference(
        cfg.model, cfg.finetuning, policy, needs_reference=spec.needs_reference, dtype=dtype,
        cached=tables is not None, training=args.do_train,
    )
    mark("model_loaded")
    trainer = PreferenceTrainer(
        model=policy,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=make_collator(tokenizer, stage=cfg.finetuning.stage),
        processing_class=tokenizer,
        callbacks=[*callbacks, *phase_callbacks()],
        loss=spec,
        loss_kwargs=loss_kwargs(spec, cfg.finetuning),
        reference=reference,
        pref_ftx=cfg.finetuning.pref_ftx,
        logps_chunk_size=cfg.finetuning.logps_chunk_size,
        lean_head=cfg.finetuning.lean_head,
        loss_weights=cfg.finetuning.pref_loss_weights,
        ld_alpha=cfg.finetuning.ld_alpha,
        use_weighting=cfg.finetuning.use_weighting,
        ref_sync=(cfg.finetuning.ref_model_mixup_alpha, cfg.finetuning.ref_model_sync_steps)
        if cfg.finetuning.sync_ref_model else None,
    )
    return trainer, {"fingerprint": data.fingerprint, "skipped": dict(data.skipped), "ref_cache": cache}


def _say_unread_rows(cache: CacheInfo, args, train_rows: int) -> None:
    """A build that forwarded more train examples than a max_steps run reads says so. It builds them all on
    purpose: the key names the data, not the run's share, so longer runs and the other trials of a sweep
    (other max_steps, seeds) hit the same cache; a partial cache would need its rows in the key."""
    reads = args.max_steps * args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    if cache.status == "miss" and 0 < reads < train_rows:
        logger.info("reference cache: this run reads at most %d of the %d train examples it holds (max_steps %d); "
                    "the rest serve longer runs and other trials", reads, train_rows, args.max_steps)


def run_training(cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> RunResult:
    """Train and/or evaluate as the config says; rank 0 writes the output dir."""
    trainer, facts = build_trainer(cfg, callbacks)
    args = trainer.args
    output_dir = Path(args.output_dir)
    cache: CacheInfo = facts["ref_cache"]
    result = RunResult(
        output_dir=output_dir,
        dataset_fingerprint=facts["fingerprint"],
        skipped_rows=facts["skipped"],
        ref_cache={**cache.as_dict(), "tags": cache.tags()},
    )
    if trainer.is_world_process_zero():
        write_atomic(output_dir / RESOLVED_CONFIG_NAME, cfg.to_yaml())
        write_atomic(output_dir / REF_CACHE_NAME, json.dumps(result.ref_cache, indent=2))
    generations = GenerationLog(cfg)
    if cfg.finetuning.eval_generate and cfg.finetuning.eval_generate_every_eval:
        trainer.add_callback(GenerateAtEvalCallback(trainer, generations))
    if args.do_train:
        checkpoint = resolve_resume(cfg)
        finished = None if trainer.is_deepspeed_enabled else finished_state(checkpoint, args)
        if finished is not None:
            train_metrics = nothing_left_to_train(trainer, checkpoint, finished)
        else:
            train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
        trainer.save_model()
        mark("saved")
        trainer.log_metrics("train", train_metrics)
        save_metrics(trainer, "train", train_metrics)
        save_state(trainer)
        result.metrics.update(train_metrics)
    if args.do_eval and trainer.eval_dataset is not None:
        eval_metrics = final_evaluation(trainer)
        if trainer.reference.kind == "self":  # policy == reference: rewards are 0 by construction
            eval_metrics = {k: v for k, v in eval_metrics.items() if "rewards/" not in k}
        trainer.log_metrics("eval", eval_metrics)
        save_metrics(trainer, "eval", eval_metrics)
        result.metrics.update(eval_metrics)
        if args.do_train:
            save_state(trainer)  # a final evaluation that ran joins log_history
    if cfg.finetuning.eval_generate and trainer.eval_dataset is not None:
        generate_and_log(trainer, generations, result)
    mark("run_end")
    result.log_history = list(trainer.state.log_history)
    result.reference_forwards = cache.reference_forwards + trainer.reference_forwards
    if trainer.is_world_process_zero():  # rank 0's count; through Ray Train this file is how it gets out
        write_atomic(output_dir / REF_CACHE_NAME,
                     json.dumps({**result.ref_cache, "run_reference_forwards": result.reference_forwards}, indent=2))
    if trainer.is_world_process_zero():
        if cfg.finetuning.plot_loss:
            plot_curves(result.log_history, output_dir)
        if facts["skipped"]:
            logger.warning("skipped rows: %s", json.dumps(facts["skipped"]))
    return result


def finished_state(checkpoint: str | None, args):
    """The `TrainerState` of `checkpoint` when it already holds every step of a `max_steps` run (a run stopped
    between its last checkpoint and its end, or a sweep interrupted there); else None."""
    if not checkpoint or args.max_steps <= 0:
        return None
    from transformers.trainer_callback import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    return state if state.global_step >= args.max_steps else None


def nothing_left_to_train(trainer: PreferenceTrainer, checkpoint: str, state) -> dict[str, float]:
    """Resume from a checkpoint at `max_steps` without training: Hugging Face's loop checks the limit only after a
    step, so `train(resume_from_checkpoint=...)` would train one step past it. The weights and state are the
    checkpoint's (loaded as `train` loads them), and the callbacks see a run begin and end (MLflow opens its run)."""
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = state
    trainer.state.is_local_process_zero = trainer.is_local_process_zero()
    trainer.state.is_world_process_zero = trainer.is_world_process_zero()
    logger.info("%s holds all %d steps: nothing left to train", checkpoint, trainer.state.global_step)
    trainer.control = trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    return {"epoch": trainer.state.epoch}


def generate_and_log(trainer: PreferenceTrainer, generations: GenerationLog, result: RunResult) -> None:
    """End-of-run eval generations (`trainer.generation_log`; skipped when an evaluation at this step already
    generated): metrics through `trainer.log` (callbacks: Ray, MLflow) and into
    `generate_results.json`; rank 0 writes the rows to `generations.json` for the table."""
    metrics, _ = generations.generate(trainer)
    save_metrics(trainer, "generate", metrics)
    result.metrics.update(metrics)
    if trainer.args.do_train:
        save_state(trainer)  # the generation metrics join log_history
