"""Chat templates: LLaMA-Factory 0.9.5's `default`, `empty`, `chatml`, `llama3` and `qwen`, slot for slot.

A template turns (system, prompt messages, response) into `(prompt_ids, response_ids)`. LLaMA-Factory
(`data/template.py`, `Template._encode`) builds the ids slot by slot, and so do we, because that is what
makes the ids equal: every string slot is tokenized on its own with `add_special_tokens=False` (BPE merges
never cross a slot boundary), `{"bos_token"}` / `{"eos_token"}` slots insert the tokenizer's bos / eos id.
Each message is encoded separately; the first one carries the prefix and the system slot.

With `template` unset, `TokenizerChatTemplate` renders the tokenizer's own `chat_template` instead (see its
docstring). `get_template_and_fix_tokenizer` also edits the tokenizer the way LLaMA-Factory does (eos
replaced by the template's first stop word, pad = eos when missing, stop words registered as special
tokens, the jinja chat template rewritten for `default` and `chatml`): call it once per tokenizer,
before building the collator or saving the tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

BOS = frozenset({"bos_token"})
EOS = frozenset({"eos_token"})
Slot = str | frozenset  # a text slot with `{{content}}` placeholders, or BOS / EOS
Message = dict[str, str]  # {"role": "user" | "assistant", "content": str}


def _fill(slots: tuple[Slot, ...], **values: str) -> list[Slot]:
    """LLaMA-Factory's `StringFormatter.apply`: replace the first `{{name}}` of each text slot, in kwarg order."""
    filled: list[Slot] = []
    for slot in slots:
        if isinstance(slot, str):
            for name, value in values.items():
                slot = slot.replace("{{" + name + "}}", value, 1)
        filled.append(slot)
    return filled


def _to_ids(tokenizer: Any, elements: list[Slot]) -> list[int]:
    """LLaMA-Factory's `Template._convert_elements_to_ids`: each text slot tokenized on its own."""
    ids: list[int] = []
    for elem in elements:
        if isinstance(elem, str):
            if elem:
                ids += tokenizer.encode(elem, add_special_tokens=False)
        elif "bos_token" in elem and tokenizer.bos_token_id is not None:
            ids.append(tokenizer.bos_token_id)
        elif "eos_token" in elem and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


def _set_eos(tokenizer: Any, eos_token: str) -> None:
    if tokenizer.eos_token == eos_token:
        return
    added = tokenizer.add_special_tokens({"eos_token": eos_token})
    logger.info("eos token set to %s", eos_token)
    if added:
        logger.warning(
            "eos token %s was added to the vocabulary: the model's embedding must be resized", eos_token
        )


def _fix_special_tokens(tokenizer: Any, stop_words: tuple[str, ...], replace_eos: bool) -> None:
    """LLaMA-Factory's `Template.fix_special_tokens`, in the same order."""
    stop_words = tuple(stop_words)
    if replace_eos:
        _set_eos(tokenizer, stop_words[0])
        stop_words = stop_words[1:]
    if tokenizer.eos_token_id is None:
        _set_eos(tokenizer, "<|endoftext|>")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("pad token set to the eos token %s", tokenizer.eos_token)
    if stop_words:
        special = {"additional_special_tokens": list(stop_words)}
        try:  # transformers 5 name; keep the special tokens the tokenizer already has
            added = tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)
        except TypeError:
            added = tokenizer.add_special_tokens(special, replace_additional_special_tokens=False)
        if added:
            logger.warning(
                "stop words %s added to the vocabulary: the model's embedding must be resized", stop_words
            )


@dataclass(frozen=True)
class Template:
    """One LLaMA-Factory template (fields as in its `register_template`; slots after its defaults)."""

    name: str
    user: tuple[Slot, ...] = ("{{content}}",)
    assistant: tuple[Slot, ...] = ("{{content}}", EOS)
    system: tuple[Slot, ...] = ("{{content}}",)  # LF: format_system defaults to the plain `{{content}}`
    prefix: tuple[Slot, ...] = ()
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    efficient_eos: bool = False  # eos appended after the response instead of inside the assistant slot
    replace_eos: bool = False  # eos becomes stop_words[0]
    replace_jinja_template: bool = False

    def encode_oneturn(
        self, tokenizer: Any, messages: list[Message], system: str | None = None
    ) -> tuple[list[int], list[int]]:
        """Ids of every message but the last (prompt) and of the last (response, with eos)."""
        encoded = self._encode(tokenizer, messages, system)
        prompt_ids = [i for ids in encoded[:-1] for i in ids]
        response_ids = encoded[-1]
        if self.efficient_eos:
            response_ids = response_ids + [tokenizer.eos_token_id]
        return prompt_ids, response_ids

    def _encode(self, tokenizer: Any, messages: list[Message], system: str | None) -> list[list[int]]:
        system = system or self.default_system
        encoded = []
        for i, message in enumerate(messages):
            elements: list[Slot] = []
            if i == 0:
                elements += self.prefix
                if system:
                    elements += _fill(self.system, content=system)
            if message["role"] == "user":
                elements += _fill(self.user, content=message["content"], idx=str(i // 2))
            elif message["role"] == "assistant":
                elements += _fill(self.assistant, content=message["content"])
            else:
                raise DataError(f"template {self.name!r}: unsupported role {message['role']!r}")
            encoded.append(_to_ids(tokenizer, elements))
        return encoded

    def fix_tokenizer(self, tokenizer: Any) -> None:
        """Edit `tokenizer` in place as LLaMA-Factory's `get_template_and_fix_tokenizer` does."""
        _fix_special_tokens(tokenizer, self.stop_words, self.replace_eos)
        if tokenizer.chat_template is None or self.replace_jinja_template:
            tokenizer.chat_template = self.jinja_template(tokenizer)

    def jinja_template(self, tokenizer: Any) -> str:
        """LLaMA-Factory's `Template._get_jinja_template`: this template as a jinja chat template."""
        prefix = _slots_to_jinja(self.prefix, tokenizer)
        system = _slots_to_jinja(self.system, tokenizer, placeholder="system_message")
        user = _slots_to_jinja(self.user, tokenizer)
        assistant = _slots_to_jinja(self.assistant, tokenizer)
        jinja = ""
        if prefix:
            jinja += "{{ " + prefix + " }}"
        if self.default_system:
            jinja += "{% set system_message = '" + _jinja_escape(self.default_system) + "' %}"
        jinja += (
            "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
            "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
            "{% if system_message is defined %}{{ " + system + " }}{% endif %}"
            "{% for message in loop_messages %}"
            "{% set content = message['content'] %}"
            "{% if message['role'] == 'user' %}"
            "{{ " + user + " }}"
            "{% elif message['role'] == 'assistant' %}"
            "{{ " + assistant + " }}"
            "{% endif %}"
            "{% endfor %}"
        )
        return jinja


def _jinja_escape(content: str) -> str:
    return content.replace("'", r"\'")


def _slots_to_jinja(slots: tuple[Slot, ...], tokenizer: Any, placeholder: str = "content") -> str:
    items = []
    for slot in slots:
        if isinstance(slot, str):
            pieces = slot.split("{{content}}")
            if pieces[0]:
                items.append("'" + _jinja_escape(pieces[0]) + "'")
            if len(pieces) > 1:
                items.append(placeholder)
                if pieces[1]:
                    items.append("'" + _jinja_escape(pieces[1]) + "'")
        elif "bos_token" in slot and tokenizer.bos_token_id is not None:
            items.append("'" + tokenizer.bos_token + "'")
        elif "eos_token" in slot and tokenizer.eos_token_id is not None:
            items.append("'" + tokenizer.eos_token + "'")
    return " + ".join(items)


_CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{{content}}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"

# Copied from LLaMA-Factory 0.9.5 `data/template.py` (register_template calls of the same names).
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="default",
            user=("Human: {{content}}", EOS, "\nAssistant:"),
            assistant=("{{content}}", EOS, "\n"),
            system=("System: {{content}}", EOS, "\n"),
            replace_jinja_template=True,
        ),
        Template(name="empty", assistant=("{{content}}",)),  # no eos at all, as in LF
        Template(
            name="chatml",
            user=(_CHATML_USER,),
            assistant=(_CHATML_ASSISTANT,),
            system=(_CHATML_SYSTEM,),
            stop_words=("<|im_end|>", "<|im_start|>"),
            replace_eos=True,
            replace_jinja_template=True,
        ),
        Template(
            name="llama3",
            user=(
                "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            assistant=("{{content}}<|eot_id|>",),
            system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
            prefix=(BOS,),
            stop_words=("<|eot_id|>", "<|eom_id|>"),
            replace_eos=True,
        ),
        Template(
            name="qwen",
            user=(_CHATML_USER,),
            assistant=(_CHATML_ASSISTANT,),
            system=(_CHATML_SYSTEM,),
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            stop_words=("<|im_end|>",),
            replace_eos=True,
        ),
    )
}


@dataclass(frozen=True)
class TokenizerChatTemplate:
    """The tokenizer's own jinja `chat_template` (used when `template` is unset).

    The prompt is rendered with `add_generation_prompt=True`; the response ids are the full conversation's
    ids after the prompt's ids. Both texts are tokenized whole (`add_special_tokens=False`), so the prompt's
    ids must be a prefix of the conversation's ids; when a template's text or a BPE merge across the
    boundary breaks that, encoding raises a DataError instead of guessing.

    LLaMA-Factory instead parses the chat template back into slots (`parse_template`); for ChatML-like
    templates without a default system prompt the two give the same ids (tested).
    """

    name: str = "tokenizer"
    efficient_eos: bool = False

    def encode_oneturn(
        self, tokenizer: Any, messages: list[Message], system: str | None = None
    ) -> tuple[list[int], list[int]]:
        conversation = ([{"role": "system", "content": system}] if system else []) + list(messages)
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
                f"set `template` to a named template ({', '.join(TEMPLATES)})"
            )
        return prompt_ids, full_ids[len(prompt_ids) :]

    def fix_tokenizer(self, tokenizer: Any) -> None:
        _fix_special_tokens(tokenizer, (), replace_eos=False)


def get_template_and_fix_tokenizer(tokenizer: Any, name: str | None) -> Template | TokenizerChatTemplate:
    """The template named `name` (None: the tokenizer's chat_template), after fixing `tokenizer` for it.

    As in LLaMA-Factory, a tokenizer without a chat_template and no `template` falls back to `empty`.
    """
    if name is None:
        if isinstance(tokenizer.chat_template, str):
            template: Template | TokenizerChatTemplate = TokenizerChatTemplate()
        else:
            logger.warning(
                "`template` is unset and the tokenizer has no chat_template: using the `empty` template"
            )
            template = TEMPLATES["empty"]
    elif name in TEMPLATES:
        template = TEMPLATES[name]
    else:
        raise ConfigError(f"template {name!r} is unknown; known: {sorted(TEMPLATES)}")
    template.fix_tokenizer(tokenizer)
    return template
