"""The evaluation after training, run only when training did not just evaluate the same weights.

Hugging Face's trainer evaluates at the last step of a step- or epoch-based schedule (`DefaultFlowCallback`
adds that evaluation when the last step is off the schedule), and LLaMA-Factory's workflow then calls
`evaluate()` again on the weights it has just evaluated: a second pass over the whole eval set that yields
the same numbers (eval mode, the same batches, no weight change in between) and costs what the first one
did, minutes on a large eval split. Here the metrics of the in-training evaluation are reused when it ran at
the final step on the weights being saved; otherwise (`load_best_model_at_end` swapped the weights, no
training ran, the eval schedule is `no`, named eval sets) the trainer evaluates as before.

The decision reads only `log_history` and the arguments, which are the same on every rank, so every rank
takes the same branch (`evaluate` is collective).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("prefsweep")


def evaluated_at_last_step(trainer) -> dict[str, float] | None:
    """The metrics `evaluate(metric_key_prefix="eval")` would return now (but its timings), when training's own
    last log of `eval_loss` is from the final step and the model still holds the weights it evaluated."""
    args, state = trainer.args, trainer.state
    if not args.do_train or args.load_best_model_at_end or not state.global_step:
        return None
    for entry in reversed(state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") != state.global_step:
                return None
            return {key: value for key, value in entry.items() if key.startswith("eval_") or key == "epoch"}
    return None


def final_evaluation(trainer) -> dict[str, float]:
    """The eval metrics of the trained model: reused from the evaluation at the last step, else evaluated."""
    metrics = evaluated_at_last_step(trainer)
    if metrics is None:
        return trainer.evaluate(metric_key_prefix="eval")
    logger.info("final evaluation: the model was evaluated at its last step (%d); those metrics are its results",
                trainer.state.global_step)
    return metrics
