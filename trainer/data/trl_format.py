"""TRL-format datasets, used without a `dataset_info.json`: the format is read from the column names.

- preference, standard:        prompt (str), chosen (str), rejected (str)
- preference, conversational:  chosen / rejected message lists; the prompt is explicit (a `prompt` message
                               list, or a string: one user turn) or implicit (the messages chosen and
                               rejected share before they differ, as TRL's `extract_prompt`)
- unpaired (KTO):              prompt, completion (strings or message lists), label (bool)

Other columns (ids, scores) are ignored. Each row is rewritten as a sharegpt record with OpenAI-style
tags (`role`/`content`, `user`/`assistant`/`system`), so the sharegpt converter's checks (roles in order,
text fields, a leading system message as the system prompt) and the template rendering are the same as
for any other dataset. A response must be one assistant message: multi-turn responses are bad rows.
"""

from __future__ import annotations

from typing import Any

from trainer.data.conversion import (
    MISSING_CHOSEN,
    MISSING_PROMPT,
    MISSING_REJECTED,
    MISSING_RESPONSE,
    WRONG_TYPE,
    BadRow,
)
from trainer.errors import ConfigError

PREFERENCE = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")
FORMATS = (
    "preference: prompt, chosen, rejected (prompt may be left out when chosen and rejected are message lists)",
    "unpaired (KTO): prompt, completion, label",
)
# The sharegpt view of a TRL row (see `to_sharegpt`): column names and tags for `DatasetAttr`.
ATTR_FIELDS = {
    "formatting": "sharegpt",
    "messages": "messages",
    "chosen": "chosen",
    "rejected": "rejected",
    "kto_tag": "label",
    "system": None,
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def detect(columns: list[str], where: str) -> bool:
    """True for preference pairs, False for unpaired KTO rows; ConfigError listing found vs expected."""
    found = set(columns)
    paired = {"chosen", "rejected"} <= found
    unpaired = set(UNPAIRED) <= found
    expected = "; ".join(FORMATS)
    if paired and unpaired:
        raise ConfigError(
            f"{where}: columns {sorted(found)} fit both TRL formats (chosen/rejected and completion/label); "
            f"keep the columns of one: {expected}"
        )
    if paired:
        return True
    if unpaired:
        return False
    near = max((PREFERENCE, UNPAIRED), key=lambda cols: len(found & set(cols)))
    missing = [c for c in near if c not in found]
    raise ConfigError(
        f"{where}: columns {sorted(found)} are no TRL format (missing {missing}); expected {expected}"
        f" (or register the data in dataset_dir/dataset_info.json)"
    )


def _message_list(value: Any, column: str, missing: str) -> str | list[dict]:
    if value is None:
        raise BadRow(missing, f"{column} is missing")
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        for n, message in enumerate(value):
            if not isinstance(message, dict):
                raise BadRow(WRONG_TYPE, f"{column}[{n}] must be a message object, got {type(message).__name__}")
        return list(value)
    raise BadRow(WRONG_TYPE, f"{column} must be a string or a list of messages, got {type(value).__name__}")


def _as_prompt(value: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


def _response(value: str | list[dict], prompt: list[dict], column: str) -> dict:
    """The one assistant message after the prompt (a full conversation repeating the prompt is cut)."""
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if value[: len(prompt)] == prompt:
        value = value[len(prompt) :]
    if len(value) != 1:
        raise BadRow(
            WRONG_TYPE, f"{column} must hold one assistant message after the prompt, got {len(value)} messages"
        )
    return value[0]


def _shared_prefix(chosen: list[dict], rejected: list[dict]) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def to_sharegpt(record: Any, *, ranking: bool) -> dict[str, Any]:
    """One TRL row -> a sharegpt record for `ATTR_FIELDS`; raises BadRow."""
    if not isinstance(record, dict):
        raise BadRow(WRONG_TYPE, f"a row must be an object, got {type(record).__name__}")
    if not ranking:
        prompt = _as_prompt(_message_list(record.get("prompt"), "prompt", MISSING_PROMPT))
        completion = _message_list(record.get("completion"), "completion", MISSING_RESPONSE)
        return {"messages": prompt + [_response(completion, prompt, "completion")], "label": record.get("label")}

    chosen = _message_list(record.get("chosen"), "chosen", MISSING_CHOSEN)
    rejected = _message_list(record.get("rejected"), "rejected", MISSING_REJECTED)
    if record.get("prompt") is not None:
        prompt = _as_prompt(_message_list(record["prompt"], "prompt", MISSING_PROMPT))
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt = chosen[: _shared_prefix(chosen, rejected)]  # implicit prompt
    else:
        raise BadRow(
            MISSING_PROMPT,
            "prompt is missing (without a prompt, chosen and rejected must be message lists that share it)",
        )
    return {
        "messages": prompt,
        "chosen": _response(chosen, prompt, "chosen"),
        "rejected": _response(rejected, prompt, "rejected"),
    }
