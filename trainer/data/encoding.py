"""Normalized examples -> token ids and label masks, as LLaMA-Factory 0.9.5's pairwise and feedback processors.

Pairwise (stage dpo; LF `data/processor/pairwise.py`): the prompt is encoded once, both responses are cut
to the same length, and `cutoff_len` is split between prompt and the longer response by `infer_seqlen`.
Feedback (stage kto; LF `data/processor/feedback.py`): one response per example plus a KL example pairing
the example's prompt with the response of the previous example in the same map batch (the first example
of a batch takes the batch's last response). Prompt labels are IGNORE_INDEX.

Both encoders are callables for `datasets.Dataset.map(batched=True)`. An example whose response is empty
after truncation is dropped (the caller counts the drop as rows in minus rows out).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from trainer.data.templates import Template, TokenizerChatTemplate
from trainer.errors import DataError
from trainer.labels import IGNORE_INDEX

PAIRWISE_COLUMNS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "chosen_labels",
    "rejected_input_ids",
    "rejected_attention_mask",
    "rejected_labels",
)
FEEDBACK_COLUMNS = (
    "input_ids",
    "attention_mask",
    "labels",
    "kl_input_ids",
    "kl_attention_mask",
    "kl_labels",
    "kto_tags",
)
MAP_BATCH_SIZE = 1000  # LF's preprocessing_batch_size; it also sets which examples the KL pairs mismatch


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Lengths (prompt, response) after truncation to `cutoff_len`; LLaMA-Factory's rule, verbatim.

    A short response (< cutoff/2) keeps all of itself and the prompt gets the rest; else a short prompt
    (< cutoff/2) keeps all of itself and the response gets the rest; else both are cut in proportion
    to their lengths (response: int(cutoff * target / (source + target))).
    """
    if target_len * 2 < cutoff_len:  # truncate source
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # truncate target
        max_target_len = cutoff_len - source_len
    else:  # truncate both
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def _oneturn(
    template: Template | TokenizerChatTemplate,
    tokenizer: Any,
    prompt: list[dict[str, str]],
    response: str,
    system: str,
    where: str,
) -> tuple[list[int], list[int]]:
    try:
        return template.encode_oneturn(
            tokenizer, prompt + [{"role": "assistant", "content": response}], system
        )
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _where(batch: dict[str, list], i: int) -> str:
    return f"{batch['_source'][i]}: row {batch['_row'][i]}"


@dataclass
class PairwiseEncoder:
    """`datasets.map` function: prompt/chosen/rejected/system -> PAIRWISE_COLUMNS."""

    template: Template | TokenizerChatTemplate
    tokenizer: Any
    cutoff_len: int

    def encode(
        self, prompt: list[dict[str, str]], chosen: str, rejected: str, system: str, where: str = "example"
    ) -> dict[str, list[int]] | None:
        prompt_ids, chosen_ids = _oneturn(self.template, self.tokenizer, prompt, chosen, system, where)
        _, rejected_ids = _oneturn(self.template, self.tokenizer, prompt, rejected, system, where)
        # the responses matter more: the prompt is cut first (LF: "consider the response is more important")
        source_len, target_len = infer_seqlen(
            len(prompt_ids), max(len(chosen_ids), len(rejected_ids)), self.cutoff_len
        )
        if target_len == 0:
            return None
        prompt_ids = prompt_ids[:source_len]
        chosen_ids, rejected_ids = chosen_ids[:target_len], rejected_ids[:target_len]
        out = {}
        for key, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            out[f"{key}_input_ids"] = prompt_ids + ids
            out[f"{key}_attention_mask"] = [1] * (source_len + len(ids))
            out[f"{key}_labels"] = [IGNORE_INDEX] * source_len + ids
        return out

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns: dict[str, list] = defaultdict(list)
        for i in range(len(batch["prompt"])):
            example = self.encode(
                batch["prompt"][i],
                batch["chosen"][i],
                batch["rejected"][i],
                batch["system"][i],
                _where(batch, i),
            )
            if example is not None:
                for key in PAIRWISE_COLUMNS:
                    columns[key].append(example[key])
        return {key: columns[key] for key in PAIRWISE_COLUMNS}


@dataclass
class FeedbackEncoder:
    """`datasets.map` function: prompt/response/kto_tag/system -> FEEDBACK_COLUMNS, with LF's KL pairs."""

    template: Template | TokenizerChatTemplate
    tokenizer: Any
    cutoff_len: int

    def _truncated(
        self, prompt: list[dict[str, str]], response: str, system: str, where: str
    ) -> tuple[list[int], list[int], list[int]]:
        prompt_ids, response_ids = _oneturn(self.template, self.tokenizer, prompt, response, system, where)
        source_len, target_len = infer_seqlen(len(prompt_ids), len(response_ids), self.cutoff_len)
        prompt_ids, response_ids = prompt_ids[:source_len], response_ids[:target_len]
        return (
            prompt_ids + response_ids,
            [1] * (source_len + target_len),
            [IGNORE_INDEX] * source_len + response_ids,
        )

    def encode(
        self,
        prompt: list[dict[str, str]],
        response: str,
        kl_response: str,
        kto_tag: bool,
        system: str,
        where: str = "example",
    ) -> dict[str, Any] | None:
        input_ids, attention_mask, labels = self._truncated(prompt, response, system, where)
        if all(label == IGNORE_INDEX for label in labels):
            return None
        # KL example: this prompt with a response written for another prompt (LF keeps it even if empty).
        kl_input_ids, kl_attention_mask, kl_labels = self._truncated(prompt, kl_response, system, where)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "kl_input_ids": kl_input_ids,
            "kl_attention_mask": kl_attention_mask,
            "kl_labels": kl_labels,
            "kto_tags": bool(kto_tag),
        }

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        responses = batch["response"]
        # LF: "mismatched pairs of prompts and completions ... by adding a +1 offset to the order of completions"
        kl_responses = responses[-1:] + responses[:-1]
        columns: dict[str, list] = defaultdict(list)
        for i in range(len(responses)):
            example = self.encode(
                batch["prompt"][i],
                responses[i],
                kl_responses[i],
                batch["kto_tag"][i],
                batch["system"][i],
                _where(batch, i),
            )
            if example is not None:
                for key in FEEDBACK_COLUMNS:
                    columns[key].append(example[key])
        return {key: columns[key] for key in FEEDBACK_COLUMNS}
