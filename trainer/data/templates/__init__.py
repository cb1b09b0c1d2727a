"""Chat templates: every template of LLaMA-Factory 0.9.5, as data entries, and the tokenizer's own.

    template = get_template_and_fix_tokenizer(tokenizer, "qwen3_nothink")
    prompt_ids, response_ids = template.encode_oneturn(tokenizer, messages, system)

Modules: `engine` (what an entry is and how it becomes ids), `text_a_to_l`, `text_m_to_z` and
`multimodal` (the entries; a multimodal family's template serves text rows only), `chat_template` (the
tokenizer's own jinja template, used when `template` is unset).

`get_template_and_fix_tokenizer` also edits the tokenizer the way LLaMA-Factory does (eos replaced by the
template's first stop word, pad = eos when missing, stop words registered as special tokens, the jinja chat
template written for templates that ask for it): call it once per tokenizer, before building the collator
or saving the tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from trainer.data.templates import multimodal, text_a_to_l, text_m_to_z
from trainer.data.templates.chat_template import TokenizerChatTemplate
from trainer.data.templates.engine import BOS, EOS, Template, Token, template
from trainer.errors import ConfigError, nearest

logger = logging.getLogger(__name__)

TEMPLATES: dict[str, Template] = dict(
    sorted({**text_a_to_l.ENTRIES, **text_m_to_z.ENTRIES, **multimodal.ENTRIES}.items())
)


def unknown_template_error(name: str) -> ConfigError:
    """`template: NAME` names no entry: say so, with the name most likely meant."""
    spelled = name.lower().replace("-", "_")  # `Qwen3`, `qwen3-nothink`: a spelling of a known name
    near = spelled if spelled in TEMPLATES else nearest(name, TEMPLATES, prefixes=True)
    hint = f"; did you mean {near!r}?" if near else ""  # as trainer.errors.did_you_mean, with the spelling above
    return ConfigError(
        f"template {name!r} is unknown{hint} ({len(TEMPLATES)} templates: {', '.join(TEMPLATES)}; "
        f"leave `template` unset to use the tokenizer's own chat_template)"
    )


def get_template(
    name: str | None,
    *,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    default_system: str | None = None,
) -> Template:
    """The entry `name` with the config's options applied (LF sets them on its shared entry in place)."""
    if name not in TEMPLATES:
        raise unknown_template_error(str(name))
    entry = TEMPLATES[name]
    if default_system is not None:
        entry = replace(entry, default_system=default_system)
    if entry.thinking is not None:
        entry = replace(entry, enable_thinking=enable_thinking, preserve_thinking=preserve_thinking)
    return entry


def template_options(data_args: Any) -> dict[str, Any]:
    """`get_template`'s options from a `config.DataArguments` (or anything with those attributes)."""
    return {
        "enable_thinking": getattr(data_args, "enable_thinking", True),
        "preserve_thinking": getattr(data_args, "preserve_thinking", False),
        "default_system": getattr(data_args, "default_system", None),
    }


def get_template_and_fix_tokenizer(
    tokenizer: Any, name: str | None, **options: Any
) -> Template | TokenizerChatTemplate:
    """The template named `name` (None: the tokenizer's chat_template), after fixing `tokenizer` for it.

    `options` are `get_template`'s (enable_thinking, preserve_thinking, default_system). A tokenizer
    without a chat_template and no `template` is a ConfigError: LLaMA-Factory silently trains on `empty`
    there, which gives a chat model a format it never saw.
    """
    if name is None:
        if not isinstance(tokenizer.chat_template, str):
            raise ConfigError(
                "`template` is unset and the tokenizer has no chat_template: name one "
                "(`template: empty` for raw text without any chat markup, or the model's template, "
                "e.g. `template: llama3`)"
            )
        chosen: Template | TokenizerChatTemplate = TokenizerChatTemplate()
    else:
        chosen = get_template(name, **options)
    chosen.fix_tokenizer(tokenizer)
    return chosen


__all__ = [
    "BOS",
    "EOS",
    "TEMPLATES",
    "Template",
    "Token",
    "TokenizerChatTemplate",
    "get_template",
    "get_template_and_fix_tokenizer",
    "template",
    "template_options",
    "unknown_template_error",
]
