"""A thin `transformers.Trainer` for paired (dpo) and unpaired (kto) preference losses.

The Trainer keeps what it does well (gradient accumulation, DDP/DeepSpeed, checkpoints, schedulers);
this subclass overrides only `compute_loss`, `prediction_step`, `log` and the samplers (length-grouped
training order, `trainer.length_sampler`). The loss itself comes from `trainer.losses` through its
registry: no loss names are compared here.

Metrics are stored per step as (sum, count) pairs all-reduced across workers, so every logged mean is
over all workers' examples (a per-worker accuracy of 0 or 1 is a known bug elsewhere). `padding_fraction`
is pooled the same way (padded positions / positions of the forward batches), per logging window and,
as `epoch_padding_fraction`, per epoch.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback

from trainer.checkpoints import load_deepspeed_checkpoints_weights_only, mark_checkpoint_complete
from trainer.data.collator import REFERENCE_COLUMNS
from trainer.lean_head import hidden_logps, hidden_states_as_logits
from trainer.length_sampler import SeededLengthGroupedSampler, grouping_batch_size, padded_lengths
from trainer.logps import SequenceLogps, response_mask, sequence_logps
from trainer.losses import LossSpec, paired_objective, sft_loss
from trainer.losses.config_checks import HPARAM_KEYS
from trainer.models import Reference, prepare_deepspeed_reference
from trainer.reference_sync import ReferenceSyncCallback

logger = logging.getLogger("prefsweep")

EPOCH_PADDING_FRACTION = "epoch_padding_fraction"

Metric = Tensor | tuple[Tensor, int]
"""A metric of one step: a tensor (its sum and element count are stored) or an explicit (sum, count)."""


LOSS_KWARG_SOURCES = HPARAM_KEYS  # loss keyword -> config key


def loss_kwargs(spec: LossSpec, finetuning) -> dict[str, float]:
    return {name: getattr(finetuning, LOSS_KWARG_SOURCES[name]) for name in spec.hparams}


def response_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, lean_head: bool,
    chunk_size: int | None, log_sum_sq: bool = False,
) -> SequenceLogps:
    """(N, L) token ids -> per-sequence log-probs of the response tokens, shape (N,).

    The one forward the trainer (policy and reference) and the reference cache (`trainer.ref_cache`) run,
    so their numbers agree. Lean path: the model hands out its last hidden states and the log-probs come
    from the LM head weight chunk by chunk, so no (N, L, V) logits exist; raises ValueError for models it
    would get wrong (logit soft-caps, ZeRO-3-partitioned heads, ...; see `hidden_states_as_logits`).
    """
    if lean_head:
        with hidden_states_as_logits(model) as head:
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return hidden_logps(hidden, head.weight, labels, bias=head.bias, chunk_size=chunk_size or 1024,
                            log_sum_sq=log_sum_sq)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return sequence_logps(logits, labels, chunk_size=chunk_size, log_sum_sq=log_sum_sq)


def cached_logps(inputs: dict[str, Tensor], pairs: list[tuple[str, str]], dtype: torch.dtype) -> SequenceLogps:
    """Reference log-probs read from the batch (columns joined from the reference cache) instead of a forward.

    pairs: (summed log-prob column, response token count column) per block, each (B,); the blocks are
    concatenated in order, as the rows of the forward they replace. `dtype` is the policy log-probs' dtype
    (the cache holds float32 sums as float64, so the cast is exact). mean_logits is not a reference metric.
    """
    missing = [name for pair in pairs for name in pair if name not in inputs]
    if missing:
        raise ValueError(f"the reference is cached but the batch lacks columns {missing}; attach the cache")
    total = torch.cat([inputs[s] for s, _ in pairs]).to(dtype)
    count = torch.cat([inputs[c] for _, c in pairs]).long()
    return SequenceLogps(sum=total, count=count, mean_logits=torch.zeros_like(total))


def padding(*attention_masks: Tensor) -> tuple[Tensor, int]:
    """(padded positions, positions) over the (N, L) masks of one step's forward batches."""
    return sum((mask == 0).sum() for mask in attention_masks), sum(mask.numel() for mask in attention_masks)


class EpochCallback(TrainerCallback):
    """Per epoch: hands the epoch to the length-grouped sampler and logs `epoch_padding_fraction`.

    The Trainer calls the sampler's `set_epoch` itself, except where accelerate nests it too deep to reach
    (a multi-worker run resumed mid-epoch: SkipBatchSampler > BatchSamplerShard > BatchSampler > sampler);
    `floor(state.epoch)` is the epoch being (re)started in every case.
    """

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.epoch_padding = [0.0, 0.0]
        if self.trainer.length_sampler is not None:
            self.trainer.length_sampler.set_epoch(math.floor(state.epoch or 0))

    def on_epoch_end(self, args, state, control, **kwargs):
        pad, positions = self.trainer.epoch_padding
        if positions > 0:  # every rank logs (on_log reporters are collective); the values are all-reduced
            self.trainer.log({EPOCH_PADDING_FRACTION: pad / positions})


class PreferenceTrainer(Trainer):
    def __init__(
        self,
        *args,
        loss: LossSpec,
        loss_kwargs: dict[str, float],
        reference: Reference,
        pref_ftx: float = 0.0,
        logps_chunk_size: int | None = 1024,
        lean_head: bool = True,
        loss_weights: list[float] | None = None,
        ld_alpha: float | None = None,
        use_weighting: bool = False,
        ref_sync: tuple[float, int] | None = None,
        **kwargs,
    ):
        """loss_weights: one per component of a combined loss (default 1 each); ld_alpha: LD-DPO's weight of
        the verbose tail; use_weighting: WPO pair weights; ref_sync: TR-DPO's (mixup alpha, sync steps)."""
        super().__init__(*args, **kwargs)
        self.loss = loss
        self.loss_kwargs = loss_kwargs
        self.loss_weights = loss_weights
        self.ld_alpha = ld_alpha
        self.use_weighting = use_weighting
        self.reference = reference
        self.pref_ftx = pref_ftx
        self.logps_chunk_size = logps_chunk_size
        self.lean_head = lean_head
        # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._stored: dict[str, dict[str, Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.reference_forwards = 0
        """Examples (pairs for dpo, completion + KL row for kto) passed through the reference model here."""
        self.epoch_padding = [0.0, 0.0]
        """(padded positions, positions) of this epoch's training forwards so far, over all workers."""
        self.length_sampler: SeededLengthGroupedSampler | None = None
        self.add_callback(EpochCallback(self))
        if reference.model is not None:
            if self.is_deepspeed_enabled:
                ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
                reference.model = prepare_deepspeed_reference(reference.model, ds_config)
            else:
                reference.model.to(self.args.device)
        if self.is_deepspeed_enabled:
            load_deepspeed_checkpoints_weights_only()  # resume: no unpickling of DeepSpeed's files
        if ref_sync is not None and reference.kind != "self":  # "self": evaluation only, nothing moves
            if reference.model is None:
                raise ValueError(f"sync_ref_model needs a separate reference model, but the reference is {reference.kind}")
            if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
                raise ValueError("sync_ref_model with DeepSpeed ZeRO-3 is not supported (partitioned weights); "
                                 "use ZeRO-1/2")
            self.add_callback(ReferenceSyncCallback(self, *ref_sync))

    # ---- forward passes -------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        """Hugging Face's save, then (all ranks done writing) rank 0 marks the checkpoint complete."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank's shards and RNG file are in
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            mark_checkpoint_complete(folder, self.state.global_step)

    def _logps(self, model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
               log_sum_sq: bool = False) -> SequenceLogps:
        """(N, L) token ids -> (N,) response log-probs (`response_logps`). A model the lean path refuses
        falls back to the logits path, once, with a warning."""
        if self.lean_head:
            try:
                return response_logps(model, input_ids, attention_mask, labels, lean_head=True,
                                      chunk_size=self.logps_chunk_size, log_sum_sq=log_sum_sq)
            except ValueError as err:
                logger.warning("lean LM-head log-probs are off for this model (%s); computing full logits", err)
                self.lean_head = False
        return response_logps(model, input_ids, attention_mask, labels, lean_head=False,
                              chunk_size=self.logps_chunk_size, log_sum_sq=log_sum_sq)

    @torch.no_grad()
    def _reference_logps(self, model: nn.Module, input_ids, attention_mask, labels) -> SequenceLogps:
        with self.reference.forward_model(self.accelerator.unwrap_model(model)) as ref:
            return self._logps(ref, input_ids, attention_mask, labels)

    def _reference(self, model: nn.Module, inputs: dict[str, Tensor], prefix: str, block: str,
                   examples: int, dtype: torch.dtype) -> SequenceLogps:
        """Reference log-probs of the rows `{prefix}input_ids`: from the cached columns of `block`
        (`REFERENCE_COLUMNS[stage][block]`) when the reference is cached, else one reference forward."""
        if self.reference.kind == "cached":
            return cached_logps(inputs, REFERENCE_COLUMNS[self.loss.stage][block], dtype)
        self.reference_forwards += examples
        batch = (inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"], inputs[f"{prefix}labels"])
        return self._reference_logps(model, *batch)

    # ---- losses ---------------------------------------------------------------------------------

    def paired_loss(self, model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Metric]]:
        """Batch of 2B rows (chosen block, then rejected block) -> scalar loss and metric (sum, count)s.

        The loss's components, weights and modifiers are composed by `trainer.losses.paired_objective`."""
        batch = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        policy = self._logps(model, *batch, log_sum_sq=self.use_weighting)
        reference = None
        if self.loss.needs_reference:
            reference = self._reference(model, inputs, "", "pair", len(policy.sum) // 2, policy.sum.dtype)
        objective = paired_objective(
            self.loss, self.loss_kwargs, self.loss_weights, policy, reference,
            response_mask=response_mask(inputs["labels"]) if self.ld_alpha is not None else None,
            ld_alpha=self.ld_alpha, reference_weighted=self.reference.kind == "cached",  # cache: LD-weighted sums
            use_weighting=self.use_weighting,
        )
        loss = objective.loss
        if self.pref_ftx > 0:
            loss = loss + self.pref_ftx * sft_loss(policy.mean.chunk(2)[0]).mean()
        rewards = objective.rewards
        logps_chosen, logps_rejected = objective.logps.chunk(2)
        mean_logits_chosen, mean_logits_rejected = policy.mean_logits.chunk(2)
        metrics = {
            "rewards/chosen": rewards.chosen_rewards,
            "rewards/rejected": rewards.rejected_rewards,
            "rewards/accuracies": (rewards.chosen_rewards > rewards.rejected_rewards).float(),
            "rewards/margins": rewards.chosen_rewards - rewards.rejected_rewards,
            "logps/chosen": logps_chosen,
            "logps/rejected": logps_rejected,
            "logits/chosen": mean_logits_chosen,
            "logits/rejected": mean_logits_rejected,
            **{name: value.detach() for out in objective.outputs for name, value in out.extras.items()},
            "padding_fraction": padding(inputs["attention_mask"]),
        }
        if len(objective.parts) > 1:  # per component: its batch mean before its weight
            metrics.update({f"loss/{part.name}": mean.reshape(1)
                            for part, mean in zip(self.loss.components, objective.parts)})
        if objective.pair_weights is not None:
            metrics["wpo_weights"] = objective.pair_weights
        return loss, metrics

    def kto_loss(self, model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Metric]]:
        """Unpaired batch: N completions with kto_tags, plus N mismatched (prompt, completion) KL rows."""
        batch = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        kl_batch = (inputs["kl_input_ids"], inputs["kl_attention_mask"], inputs["kl_labels"])
        tags = inputs["kto_tags"].bool()
        policy = self._logps(model, *batch)
        with torch.no_grad():  # the KL estimate is a baseline, not a gradient path (as in TRL)
            policy_kl = self._logps(model, *kl_batch).sum
        reference = self._reference(model, inputs, "", "completion", len(tags), policy.sum.dtype).sum
        reference_kl = self._reference(model, inputs, "kl_", "kl", 0, policy.sum.dtype).sum

        def reduce_kl(kl: Tensor) -> Tensor:
            return self.accelerator.reduce(kl.detach().clone(), reduction="mean")

        out = self.loss.fn(policy.sum, reference, tags, policy_kl, reference_kl, **self.loss_kwargs, kl_reduce=reduce_kl)
        loss = out.losses.mean()
        if self.pref_ftx > 0 and tags.any():
            loss = loss + self.pref_ftx * sft_loss(policy.mean[tags]).mean()
        correct = torch.cat([(out.chosen_rewards > 0).float(), (out.rejected_rewards < 0).float()])
        metrics = {
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            # unpaired: an example counts as right when its implicit reward has the sign of its label
            "rewards/accuracies": correct,
            "logps/chosen": policy.sum[tags].detach(),
            "logps/rejected": policy.sum[~tags].detach(),
            "logits/chosen": policy.mean_logits[tags],
            "logits/rejected": policy.mean_logits[~tags],
            "kl": out.extras["kl"].reshape(1),
            "padding_fraction": padding(inputs["attention_mask"], inputs["kl_attention_mask"]),
        }
        return loss, metrics

    def _loss_and_metrics(self, model, inputs) -> tuple[Tensor, dict[str, Metric]]:
        if self.loss.stage == "kto":
            return self.kto_loss(model, inputs)
        return self.paired_loss(model, inputs)

    # ---- Trainer hooks --------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        """`train_sampling_strategy: group_by_length`: a `SeededLengthGroupedSampler` over each row's padded
        length (`padded_lengths`), grouped by the global step size (`grouping_batch_size`) and seeded by
        `data_seed` (else `seed`). Other strategies: Hugging Face's sampler."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.length_sampler = SeededLengthGroupedSampler(
            padded_lengths(dataset, self.loss.stage), grouping_batch_size(self.args), seed
        )
        return self.length_sampler

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation keeps the dataset's order, also under group_by_length (Hugging Face would group it)."""
        if self.args.train_sampling_strategy != "group_by_length" or eval_dataset is None:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self._loss_and_metrics(model, inputs)
        self._store(metrics, "train")
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self._loss_and_metrics(model, inputs)
        self._store(metrics, "eval")
        return loss.detach(), None, None

    def _store(self, metrics: dict[str, Metric], split: str) -> None:
        """All-reduce (sum, count) of every metric across workers in one collective; a tensor metric
        counts its elements, a (sum, count) pair is taken as given. Training padding also joins the epoch's."""
        names = sorted(metrics)
        pairs = [metrics[n] if isinstance(metrics[n], tuple) else (metrics[n].float().sum(), metrics[n].numel())
                 for n in names]
        device = next((total.device for total, _ in pairs if isinstance(total, Tensor)), self.args.device)
        packed = torch.tensor(
            [float(v) for total, count in pairs for v in (total, count)], dtype=torch.float64, device=device
        )
        packed = self.accelerator.reduce(packed, reduction="sum").tolist()
        stored = self._stored[split]
        for i, name in enumerate(names):
            stored[name + "/sum"] += packed[2 * i]
            stored[name + "/count"] += packed[2 * i + 1]
        if split == "train" and "padding_fraction" in metrics:
            i = names.index("padding_fraction")
            self.epoch_padding = [self.epoch_padding[0] + packed[2 * i], self.epoch_padding[1] + packed[2 * i + 1]]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if EPOCH_PADDING_FRACTION in logs:  # an epoch summary: the window's metrics stay for the step log
            return super().log(logs, start_time)
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        stored = self._stored[split]
        for key in [k[: -len("/sum")] for k in stored if k.endswith("/sum")]:
            count = stored[key + "/count"]
            if count > 0:
                logs[prefix + key] = stored[key + "/sum"] / count
        stored.clear()
        super().log(logs, start_time)
