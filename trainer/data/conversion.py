"""Raw records in `alpaca` or `sharegpt` formatting -> one normalized example, or a reason to skip the row.

Normalized example (the columns the encoders read):
- `prompt`: messages [{role, content}], roles alternating user/assistant and ending on user;
- `system`: string ("" when none: the template's default system applies);
- paired (`ranking: true`, stage dpo): `chosen`, `rejected` response strings;
- unpaired (`kto_tag` column, stage kto): `response` string and `kto_tag` bool.

Mapping follows LLaMA-Factory 0.9.5's `data/converter.py`: alpaca prompt = history pairs + a user turn of
"instruction\\ninput" (empty parts left out); sharegpt takes a leading system-tag message as the system
prompt, else the `system` column; alpaca chosen/rejected are strings, sharegpt's are message objects.
Where LF would crash, silently drop, or train on a malformed row, we raise `BadRow` with a reason from
REASONS and a detail naming the field; the loader counts and reports those.
"""

from __future__ import annotations

import math
from typing import Any

from trainer.data.dataset_attr import DatasetAttr

INVALID_JSON = "invalid JSON"
UNDECODABLE = "undecodable text"
WRONG_TYPE = "wrong type"
NAN = "NaN"
MISSING_PROMPT = "missing prompt"
MISSING_CHOSEN = "missing chosen"
MISSING_REJECTED = "missing rejected"
MISSING_RESPONSE = "missing response"
EMPTY_RESPONSE = "empty response"
ROLES_OUT_OF_ORDER = "roles out of order"
UNSUPPORTED_ROLE = "unsupported role"
NON_BOOLEAN_KTO_TAG = "non-boolean kto_tag"
EMPTY_AFTER_TRUNCATION = "empty response after truncation"
REASONS = (
    INVALID_JSON,
    UNDECODABLE,
    WRONG_TYPE,
    NAN,
    MISSING_PROMPT,
    MISSING_CHOSEN,
    MISSING_REJECTED,
    MISSING_RESPONSE,
    EMPTY_RESPONSE,
    ROLES_OUT_OF_ORDER,
    UNSUPPORTED_ROLE,
    NON_BOOLEAN_KTO_TAG,
    EMPTY_AFTER_TRUNCATION,
)


class BadRow(Exception):
    """A row that cannot be used; `reason` is one of REASONS, `detail` says which field and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any, what: str, missing: str) -> str:
    """`value` as a clean str; None -> BadRow(missing), NaN, non-strings and bad UTF-8 -> BadRow."""
    if value is None:
        raise BadRow(missing, f"{what} is missing")
    if _is_nan(value):
        raise BadRow(NAN, f"{what} is NaN")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRow(UNDECODABLE, f"{what} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, f"{what} must be a string, got {type(value).__name__} {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRow(UNDECODABLE, f"{what} holds invalid UTF-8 bytes or a lone surrogate") from None
    return value


def _optional_text(value: Any, what: str) -> str:
    return "" if value is None else _text(value, what, MISSING_PROMPT)


def _response(value: Any, what: str, missing: str) -> str:
    text = _text(value, what, missing)
    if not text.strip():
        raise BadRow(EMPTY_RESPONSE, f"{what} is empty")
    return text


def _kto_tag(record: dict[str, Any], attr: DatasetAttr) -> bool:
    tag = record.get(attr.kto_tag)
    if not isinstance(tag, bool):
        raise BadRow(NON_BOOLEAN_KTO_TAG, f"{attr.kto_tag} must be true or false, got {_short(tag)}")
    return tag


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def convert_record(record: Any, attr: DatasetAttr) -> dict[str, Any]:
    """One raw record -> normalized example (paired when `attr.ranking`, else unpaired); raises BadRow."""
    if not isinstance(record, dict):
        raise BadRow(WRONG_TYPE, f"a row must be an object, got {type(record).__name__}")
    if attr.formatting == "alpaca":
        return _alpaca(record, attr)
    return _sharegpt(record, attr)


def _alpaca(record: dict[str, Any], attr: DatasetAttr) -> dict[str, Any]:
    prompt: list[dict[str, str]] = []
    history = record.get(attr.history) if attr.history else None
    if history is not None:
        if _is_nan(history):
            raise BadRow(NAN, f"{attr.history} is NaN")
        if not isinstance(history, list):
            raise BadRow(WRONG_TYPE, f"{attr.history} must be a list of [prompt, response] pairs")
        for n, turn in enumerate(history):
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
                raise BadRow(WRONG_TYPE, f"{attr.history}[{n}] must be a [prompt, response] pair")
            prompt.append(
                {"role": "user", "content": _text(turn[0], f"{attr.history}[{n}][0]", MISSING_PROMPT)}
            )
            prompt.append(
                {"role": "assistant", "content": _text(turn[1], f"{attr.history}[{n}][1]", MISSING_PROMPT)}
            )
    query = []
    for column in (attr.prompt, attr.query):
        if column:
            part = _optional_text(record.get(column), column)
            if part:
                query.append(part)
    prompt.append({"role": "user", "content": "\n".join(query)})  # LF: "instruction\ninput"
    system = _optional_text(record.get(attr.system), attr.system) if attr.system else ""

    if attr.ranking:
        pair = {}
        for key, column, missing in (
            ("chosen", attr.chosen, MISSING_CHOSEN),
            ("rejected", attr.rejected, MISSING_REJECTED),
        ):
            value = record.get(column)
            if isinstance(value, dict):
                raise BadRow(
                    WRONG_TYPE, f"alpaca {column} must be a string (message objects are for sharegpt)"
                )
            pair[key] = _response(value, column, missing)
        return {"prompt": prompt, "system": system, **pair}
    response = _response(record.get(attr.response), attr.response, MISSING_RESPONSE)
    return {"prompt": prompt, "system": system, "response": response, "kto_tag": _kto_tag(record, attr)}


def _sharegpt(record: dict[str, Any], attr: DatasetAttr) -> dict[str, Any]:
    column = attr.messages
    messages = record.get(column)
    if messages is None:
        raise BadRow(MISSING_PROMPT, f"{column} is missing")
    if _is_nan(messages):
        raise BadRow(NAN, f"{column} is NaN")
    if not isinstance(messages, list):
        raise BadRow(WRONG_TYPE, f"{column} must be a list of messages, got {type(messages).__name__}")
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRow(WRONG_TYPE, f"{column}[{n}] must be a message object, got {type(message).__name__}")

    first = 0
    if attr.system_tag and messages and messages[0].get(attr.role_tag) == attr.system_tag:
        system = _text(messages[0].get(attr.content_tag), f"{column}[0].{attr.content_tag}", MISSING_PROMPT)
        first = 1
    else:
        system = _optional_text(record.get(attr.system), attr.system) if attr.system else ""

    roles = {attr.user_tag: "user", attr.assistant_tag: "assistant"}
    aligned = []
    for n in range(first, len(messages)):
        role = messages[n].get(attr.role_tag)
        expected = attr.user_tag if (n - first) % 2 == 0 else attr.assistant_tag
        _check_role(role, expected, attr, f"{column}[{n}]")
        content = _text(
            messages[n].get(attr.content_tag), f"{column}[{n}].{attr.content_tag}", MISSING_PROMPT
        )
        aligned.append({"role": roles[role], "content": content})

    if attr.ranking:  # the prompt ends on a user turn; the responses are separate columns
        if not aligned:
            raise BadRow(MISSING_PROMPT, f"{column} has no user turn")
        if len(aligned) % 2 == 0:
            raise BadRow(ROLES_OUT_OF_ORDER, f"{column} must end with a user turn ({attr.user_tag!r})")
        pair = {}
        for key, col, missing in (
            ("chosen", attr.chosen, MISSING_CHOSEN),
            ("rejected", attr.rejected, MISSING_REJECTED),
        ):
            value = record.get(col)
            if value is None:
                raise BadRow(missing, f"{col} is missing")
            if _is_nan(value):
                raise BadRow(NAN, f"{col} is NaN")
            if not isinstance(value, dict):
                raise BadRow(
                    WRONG_TYPE, f"sharegpt {col} must be a message object, got {type(value).__name__}"
                )
            _check_role(value.get(attr.role_tag), attr.assistant_tag, attr, col)
            pair[key] = _response(value.get(attr.content_tag), f"{col}.{attr.content_tag}", missing)
        return {"prompt": aligned, "system": system, **pair}

    # unpaired (kto): the conversation ends on the assistant response being judged
    if len(aligned) < 2 or len(aligned) % 2 == 1:
        raise BadRow(ROLES_OUT_OF_ORDER, f"{column} must end with an assistant turn ({attr.assistant_tag!r})")
    response = _response(
        aligned[-1]["content"], f"{column}[{len(messages) - 1}].{attr.content_tag}", MISSING_RESPONSE
    )
    return {"prompt": aligned[:-1], "system": system, "response": response, "kto_tag": _kto_tag(record, attr)}


def _check_role(role: Any, expected: str, attr: DatasetAttr, where: str) -> None:
    if role == expected:
        return
    if role in (attr.observation_tag, attr.function_tag):
        raise BadRow(UNSUPPORTED_ROLE, f"{where} has role {role!r}: tool turns are not supported")
    if role in (attr.user_tag, attr.assistant_tag, attr.system_tag):
        raise BadRow(ROLES_OUT_OF_ORDER, f"{where} has role {role!r} where {expected!r} is expected")
    raise BadRow(
        UNSUPPORTED_ROLE,
        f"{where} has unknown role {_short(role)} (tags: user {attr.user_tag!r}, assistant {attr.assistant_tag!r})",
    )
