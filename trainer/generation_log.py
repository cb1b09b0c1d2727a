"""The eval generations of one run across its evaluations: one table, a `step` column, metrics per step.

With `eval_generate_every_eval: true` the policy answers the same seeded prompts at every evaluation
during training (`GenerateAtEvalCallback`, Hugging Face's `on_evaluate`), not only at the end, so the
MLflow UI can follow what one trial writes step by step (the `eval_generate/*` and `eval_reward/*`
metrics at each eval step; the table's rows filtered by `step`). The reference answers are the same at
every step (same weights, prompts and seeds), so they are sampled once and reused, except under TR-DPO's
reference sync, where the reference moves.

A step is generated at most once: a final evaluation after training (`trainer.final_eval`: when the last step
was not evaluated on the weights being saved) fires `on_evaluate` too, and the end-of-run generation
(`trainer.workflow.generate_and_log`) then finds the step done, as it does when the last step's evaluation
during training generated.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from trainer import generation
from trainer.atomic_write import write_atomic


class GenerationLog:
    """Rows and metrics of every step generated so far in this run; rank 0 rewrites `generations.json`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = generation.SamplingSettings(max_new_tokens=cfg.finetuning.eval_generate_max_new_tokens)
        self.rows: list[generation.GenerationRow] = []
        self.metrics_by_step: dict[int, dict[str, float]] = {}
        self._reference_out: list[list[int]] | None = None

    def generate(self, trainer) -> tuple[dict[str, float], bool]:
        """Generate at the trainer's current step unless done already; (that step's metrics, whether they
        are new). New metrics go through `trainer.log`, so callbacks (Ray, MLflow) record them at the step."""
        step = trainer.state.global_step
        if step in self.metrics_by_step:
            return self.metrics_by_step[step], False
        reuse = None if _reference_moves(trainer) else self._reference_out
        rows, metrics, reference_out = generation.evaluate_generations(
            trainer, self.cfg, self.settings, reference_out=reuse)
        self._reference_out = reference_out
        for row in rows:
            row.step = step
        self.rows.extend(rows)
        self.metrics_by_step[step] = metrics
        trainer.log(dict(metrics))
        if trainer.is_world_process_zero():
            record = generation.generations_record(self.rows, metrics, self.settings)
            write_atomic(Path(trainer.args.output_dir) / generation.GENERATIONS_NAME, json.dumps(record, indent=1))
        return metrics, True


def _reference_moves(trainer) -> bool:
    from trainer.reference_sync import ReferenceSyncCallback

    return any(isinstance(c, ReferenceSyncCallback) for c in trainer.callback_handler.callbacks)


class GenerateAtEvalCallback(TrainerCallback):
    """`eval_generate_every_eval`: generate after each evaluation (every rank: sharded models need all)."""

    def __init__(self, trainer, log: GenerationLog):
        self.trainer = trainer
        self.log = log

    def on_evaluate(self, args, state, control, **kwargs):
        self.log.generate(self.trainer)
