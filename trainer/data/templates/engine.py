"""The template engine: a `Template` is data (slots, stop words, flags); this module turns it into token ids.

A template turns (system, prompt messages, response) into `(prompt_ids, response_ids)`. LLaMA-Factory
0.9.5 (`data/template.py`, `Template._encode`) builds the ids slot by slot, and so do we, because that is
what makes the ids equal: every text slot is tokenized on its own with `add_special_tokens=False` (BPE
merges never cross a slot boundary), BOS / EOS slots insert the tokenizer's bos / eos id, a `Token` slot
inserts the id of one named vocabulary token. Each message is encoded separately; the first one carries the
prefix and the system slot.

Three encodings exist in LF as subclasses; here they are flags of the entry:
- `system_in_first_user` (LF's Llama2Template): the system text is glued in front of the first user message
  instead of getting a turn of its own;
- `thinking` (LF's ReasoningTemplate): "tags" adds an empty thought block (`thought_words`) to a response
  that has none: into the prompt when `enable_thinking` is false/None (no loss on it), into the response
  when true; thoughts of earlier assistant turns are dropped; "closing_tag" (GLM-4.7) writes an empty
  thought as the closing tag alone.
"""

from __future__ import annotations

import logging
import re
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.errors import DataError

logger = logging.getLogger(__name__)

BOS = frozenset({"bos_token"})
EOS = frozenset({"eos_token"})


@dataclass(frozen=True)
class Token:
    """A slot that is one vocabulary token looked up by its string (LF's `{"token": ...}` slot)."""

    text: str


Slot = str | frozenset | Token  # a text slot with `{{content}}` placeholders, BOS / EOS, or a Token
Message = dict[str, str]  # {"role": "user" | "assistant", "content": str}
Thinking = Literal["tags", "closing_tag"] | None
THINK_WORDS = ("<think>\n", "\n</think>\n\n")  # LF's default thought_words


@dataclass(frozen=True)
class Template:
    """One chat template; build entries with `template(...)`, which fills LF's defaults."""

    name: str
    user: tuple[Slot, ...] = ("{{content}}",)
    assistant: tuple[Slot, ...] = ("{{content}}", EOS)
    system: tuple[Slot, ...] = ("{{content}}",)
    prefix: tuple[Slot, ...] = ()
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    efficient_eos: bool = False  # eos appended after the response by the encoder, not inside the slot
    replace_eos: bool = False  # eos becomes stop_words[0]
    replace_jinja_template: bool = False
    system_in_first_user: bool = False
    thinking: Thinking = None
    thought_words: tuple[str, str] = THINK_WORDS
    enable_thinking: bool | None = True  # config `enable_thinking`; only read when `thinking` is set
    preserve_thinking: bool = False  # config `preserve_thinking`: keep thoughts of earlier turns
    multimodal: str | None = None  # the media family (LF's mm_plugin); only text rows are supported
    special_tokens: tuple[str, ...] = field(default=(), compare=False)  # vocabulary tokens the slots name

    # -- encoding ------------------------------------------------------------------------------------
    def encode_oneturn(
        self, tokenizer: Any, messages: list[Message], system: str | None = None
    ) -> tuple[list[int], list[int]]:
        """Ids of every message but the last (prompt) and of the last (response).

        With `efficient_eos` the response ends with the eos id here, as LF's processors append it.
        """
        prompt_ids, response_ids = self._encode_thinking(tokenizer, messages, system)
        if self.efficient_eos:
            response_ids = response_ids + [tokenizer.eos_token_id]
        return prompt_ids, response_ids

    def _encode_thinking(
        self, tokenizer: Any, messages: list[Message], system: str | None
    ) -> tuple[list[int], list[int]]:
        if self.thinking is None:
            encoded = self._encode(tokenizer, messages, system)
            return [i for ids in encoded[:-1] for i in ids], encoded[-1]
        messages = deepcopy(messages)
        if not self.preserve_thinking:
            for i in range(1, len(messages) - 2, 2):
                messages[i]["content"] = self._remove_thought(messages[i]["content"])
        if self.enable_thinking is False:
            messages[-1]["content"] = self._remove_thought(messages[-1]["content"])
        encoded = self._encode(tokenizer, messages, system)
        prompt_ids, response_ids = [i for ids in encoded[:-1] for i in ids], encoded[-1]
        last = messages[-1]["content"]
        if self.thought_words[0].strip() not in last and self.thought_words[1].strip() not in last:
            empty = tokenizer.encode(self._empty_thought(), add_special_tokens=False)
            if self.enable_thinking:  # the model learns to write the empty thought
                response_ids = empty + response_ids
            else:  # the prompt carries it, so no loss is spent on it
                prompt_ids = prompt_ids + empty
        return prompt_ids, response_ids

    def _empty_thought(self) -> str:
        if self.thinking == "closing_tag":
            return self.thought_words[1]
        return self.thought_words[0] + self.thought_words[1]

    def _remove_thought(self, content: str) -> str:
        open_, close = (re.escape(w) for w in self.thought_words)
        return re.sub(f"{open_}(.*?){close}", "", content, flags=re.DOTALL).lstrip("\n")

    def _encode(self, tokenizer: Any, messages: list[Message], system: str | None) -> list[list[int]]:
        system = system or self.default_system
        encoded = []
        for i, message in enumerate(messages):
            elements: list[Slot] = []
            content = message["content"]
            if i == 0:
                elements += self.prefix
                if system and self.system_in_first_user:
                    content = fill(self.system[:1], content=system)[0] + content
                elif system:
                    elements += fill(self.system, content=system)
            if message["role"] == "user":
                elements += fill(self.user, content=content, idx=str(i // 2))
            elif message["role"] == "assistant":
                elements += fill(self.assistant, content=content)
            else:
                raise DataError(f"template {self.name!r}: unsupported role {message['role']!r}")
            encoded.append(to_ids(tokenizer, elements))
        return encoded

    # -- the tokenizer ---------------------------------------------------------------------------------
    def fix_tokenizer(self, tokenizer: Any) -> None:
        """Edit `tokenizer` in place as LLaMA-Factory's `get_template_and_fix_tokenizer` does."""
        fix_special_tokens(tokenizer, self.stop_words, self.replace_eos)
        if tokenizer.chat_template is None or self.replace_jinja_template:
            jinja = self.jinja_template(tokenizer)
            if jinja is not None:  # LF leaves the chat template alone when a slot is a Token
                tokenizer.chat_template = jinja

    def jinja_template(self, tokenizer: Any) -> str | None:
        """LLaMA-Factory's `_get_jinja_template` (Llama2Template's for `system_in_first_user`)."""
        parts = [_slots_to_jinja(s, tokenizer) for s in (self.prefix, self.user, self.assistant)]
        system = _slots_to_jinja(self.system, tokenizer, placeholder="system_message")
        if None in parts or system is None:
            return None
        prefix, user, assistant = parts
        jinja = "{{ " + prefix + " }}" if prefix else ""
        if self.default_system:
            jinja += "{% set system_message = '" + _jinja_escape(self.default_system) + "' %}"
        jinja += (
            "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
            "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
        )
        if self.system_in_first_user:
            jinja += (
                "{% for message in loop_messages %}"
                "{% if loop.index0 == 0 and system_message is defined %}"
                "{% set content = " + system + " + message['content'] %}"
                "{% else %}{% set content = message['content'] %}{% endif %}"
            )
        else:
            jinja += (
                "{% if system_message is defined %}{{ " + system + " }}{% endif %}"
                "{% for message in loop_messages %}"
                "{% set content = message['content'] %}"
            )
        return jinja + (
            "{% if message['role'] == 'user' %}{{ " + user + " }}"
            "{% elif message['role'] == 'assistant' %}{{ " + assistant + " }}"
            "{% endif %}{% endfor %}"
        )


def fill(slots: tuple[Slot, ...], **values: str) -> list[Slot]:
    """LLaMA-Factory's `StringFormatter.apply`: replace the first `{{name}}` of each text slot, in kwarg order."""
    filled: list[Slot] = []
    for slot in slots:
        if isinstance(slot, str):
            for name, value in values.items():
                slot = slot.replace("{{" + name + "}}", value, 1)
        filled.append(slot)
    return filled


def to_ids(tokenizer: Any, elements: list[Slot]) -> list[int]:
    """LLaMA-Factory's `Template._convert_elements_to_ids`: each text slot tokenized on its own."""
    ids: list[int] = []
    for elem in elements:
        if isinstance(elem, str):
            if elem:
                ids += tokenizer.encode(elem, add_special_tokens=False)
        elif isinstance(elem, Token):
            ids.append(tokenizer.convert_tokens_to_ids(elem.text))
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


def fix_special_tokens(tokenizer: Any, stop_words: tuple[str, ...], replace_eos: bool) -> None:
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


def _jinja_escape(content: str) -> str:
    return content.replace("'", r"\'")


def _slots_to_jinja(slots: tuple[Slot, ...], tokenizer: Any, placeholder: str = "content") -> str | None:
    """The slots as a jinja expression; None when one is a Token (LF cannot write those either)."""
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
        elif isinstance(slot, Token):
            return None
        elif "bos_token" in slot and tokenizer.bos_token_id is not None:
            items.append("'" + tokenizer.bos_token + "'")
        elif "eos_token" in slot and tokenizer.eos_token_id is not None:
            items.append("'" + tokenizer.eos_token + "'")
    return " + ".join(items)


_MARKER = re.compile(r"<\|[^<>|\s]+\|>|</?[a-z_]+>|\[gMASK\]")  # markup a real vocabulary holds whole


def template(
    name: str,
    *,
    user: tuple[Slot, ...] | None = None,
    assistant: tuple[Slot, ...] | None = None,
    system: tuple[Slot, ...] | None = None,
    like: Template | None = None,
    **flags: Any,
) -> Template:
    """A registry entry with LLaMA-Factory's `register_template` defaults (or those of `like`).

    Defaults: user and system slots are `{{content}}`; the assistant slot is `{{content}}` then eos, or
    `{{content}}` alone with `efficient_eos` (the encoder appends eos after truncation instead).
    """
    if like is not None:
        base = {k: getattr(like, k) for k in like.__dataclass_fields__ if k not in ("name", "special_tokens")}
        base.update({k: v for k, v in (("user", user), ("assistant", assistant), ("system", system)) if v})
        base.update(flags)
    else:
        plain: tuple[Slot, ...] = ("{{content}}",)
        eos_default = plain if flags.get("efficient_eos") else ("{{content}}", EOS)
        base = {
            "user": user or plain,
            "assistant": assistant or eos_default,
            "system": system or plain,
            **flags,
        }
    for key in ("user", "assistant", "system", "prefix", "stop_words", "thought_words"):
        if key in base:
            base[key] = tuple(base[key])
    entry = Template(name=name, **base)
    if entry.replace_eos and not entry.stop_words:
        raise ValueError(f"template {name!r}: replace_eos needs stop words")
    return _with_special_tokens(entry)


def _with_special_tokens(entry: Template) -> Template:
    """Record the tokens a tokenizer should hold as single special tokens for this entry (tiny model)."""
    found: dict[str, None] = dict.fromkeys(entry.stop_words)
    for slot in entry.prefix + entry.user + entry.assistant + entry.system:
        if isinstance(slot, Token):
            found[slot.text] = None
        elif isinstance(slot, str):
            found.update(dict.fromkeys(_MARKER.findall(slot)))
    if entry.thinking is not None:
        for word in entry.thought_words:
            found.update(dict.fromkeys(_MARKER.findall(word)))
    object.__setattr__(entry, "special_tokens", tuple(found))
    return entry
