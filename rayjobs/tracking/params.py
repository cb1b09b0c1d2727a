"""A config as MLflow params: secrets redacted, nested keys flattened to dotted names, keys and values
cut to MLflow's limits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

REDACTED = "***"
_SECRET_WORDS = {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials"}
# `pad_token: "<pad>"` and friends name tokenizer strings, not credentials.
_TOKENIZER_WORDS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special"}
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def _words(key: str) -> list[str]:
    return re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())


def is_secret_key(key: str) -> bool:
    """`hub_token`, `api_key`, `aws_secret_access_key`, `HF_TOKEN`, `dbPassword` are; `max_new_tokens`,
    `pad_token` and `tokenizer_name` are not."""
    words = _words(key)
    if not _SECRET_WORDS.intersection(words):
        return False
    return not ("token" in words and _TOKENIZER_WORDS.intersection(words))


def _redact_text(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1" + REDACTED + "@", _HF_TOKEN.sub(REDACTED, text))


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config tree with secret-looking keys' values and inline tokens/passwords replaced."""
    if key and is_secret_key(key) and not (value is None or isinstance(value, bool) or value == ""):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Path):
        return str(value)
    return value


def param_key(key: str) -> str:
    key = _BAD_KEY_CHARS.sub("_", key).strip("/") or "_"
    return key[:MAX_ENTITY_KEY_LENGTH]


def flatten_params(config: dict) -> dict[str, str]:
    """Nested config -> `{"ray.num_workers": "2", ...}`: values stringified, cut to MLflow's param limit,
    secrets redacted (the whole subtree under a secret-looking key)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[param_key(prefix)] = str(node)[:MAX_PARAM_VAL_LENGTH]

    walk(redact(config), "")
    return flat


def dump_yaml(config: dict) -> str:
    return yaml.safe_dump(redact(config), sort_keys=False)
