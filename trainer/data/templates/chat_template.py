"""The tokenizer's own jinja `chat_template`, used when the config names no `template` (as TRL does)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trainer.data.templates.engine import Message, fix_special_tokens
from trainer.errors import DataError


@dataclass(frozen=True)
class TokenizerChatTemplate:
    """Renders the tokenizer's `chat_template` with `apply_chat_template`.

    A chat template with `{% generation %}` markers says itself where the assistant's text is: the response
    starts where the last assistant turn's marked span starts and runs to the end of the conversation.
    Without markers the prompt is rendered with `add_generation_prompt=True`; the response ids are the full conversation's
    ids after the prompt's ids, so the loss covers exactly what the chat template writes for the assistant's
    last turn (its end-of-turn token included, and the empty thought block Qwen3's template adds). Both texts
    are tokenized whole (`add_special_tokens=False`, as `apply_chat_template(tokenize=True)` does), so the
    prompt's ids must be a prefix of the conversation's ids; when a template's text or a BPE merge across
    the boundary breaks that, encoding raises a DataError instead of guessing.

    LLaMA-Factory instead parses the chat template back into slots (`parse_template`). Checked by hand with
    LF 0.9.5: on Qwen3 and Llama 3.1 both give the same ids for the test rows; on Gemma 3 LF's parse fails
    (ValueError: its system text lives inside the first user turn, so the system slot has no placeholder).
    """

    name: str = "tokenizer"
    efficient_eos: bool = False
    multimodal: bool = False

    def encode_oneturn(
        self, tokenizer: Any, messages: list[Message], system: str | None = None
    ) -> tuple[list[int], list[int]]:
        conversation = ([{"role": "system", "content": system}] if system else []) + list(messages)
        if _GENERATION.search(tokenizer.chat_template):
            return _split_at_generation(tokenizer, conversation)
        prompt_text = tokenizer.apply_chat_template(
            conversation[:-1], tokenize=False, add_generation_prompt=True
        )
        full_text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
        prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
        full_ids = tokenizer.encode(full_text, add_special_tokens=False)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            where = "text" if not full_text.startswith(prompt_text) else "token ids"
            raise DataError(
                f"the tokenizer's chat_template does not render the prompt as a prefix of the conversation "
                f"(the {where} differ), so the response cannot be separated from the prompt; "
                f"set `template` to a named template"
            )
        return prompt_ids, full_ids[len(prompt_ids) :]

    def fix_tokenizer(self, tokenizer: Any) -> None:
        fix_special_tokens(tokenizer, (), replace_eos=False)


_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _split_at_generation(tokenizer: Any, conversation: list[Message]) -> tuple[list[int], list[int]]:
    """(prompt, response) ids split where the `{% generation %}` span of the last assistant turn starts."""
    out = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if 1 not in mask:
        raise DataError("the tokenizer's chat_template has {% generation %} markers but marked no token of the "
                        "assistant's turn; set `template` to a named template")
    start = len(mask) - mask[::-1].index(1)  # one past the last marked token
    while start > 0 and mask[start - 1] == 1:
        start -= 1
    return ids[:start], ids[start:]
