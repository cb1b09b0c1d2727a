"""Where a model's files are: a local folder, or a hub id through the hub cache (`trainer.hub`'s rules).

`resolve_model` answers with a local folder or one ConfigError line (a missing path, an uncached hub id
offline, a repo that is not there); drivers call `check_models` before any trial or worker starts, and
the loaders in `trainer.models` call `resolve_model` again (a cache hit) so workers read the same files.

`trust_remote_code: true` runs Python shipped with a checkpoint only when the checkpoint has some: an
`auto_map` in its config.json or tokenizer_config.json. Without one the model loads natively and the flag
is dropped with one warning (LLaMA-Factory's examples set it for every model); with one, the flag stays
refused unless `model_revision` pins the reviewed commit (`trainer.config`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

from trainer import hub
from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

PINNED_REVISION = re.compile(r"[0-9a-fA-F]{40}")
# What loading needs: configs, safetensors weights, tokenizer files, chat templates, remote code. Never
# pickled weights (.bin, .pt), which prefsweep refuses to load.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]
CODE_CONFIGS = ("config.json", "tokenizer_config.json")


# What the checks before training read: a driver on a CPU head node fetches no weights.
CHECK_FILES = ("*.json",)


@functools.lru_cache(maxsize=16)
def _snapshot(name: str, revision: str | None, cache: str, offline: bool, what: str, patterns: tuple) -> str:
    return str(hub.snapshot(name, repo_type="model", revision=revision, cache_dir=cache,
                            allow_patterns=list(patterns), what=what))


def resolve_model(name: str, *, revision: str | None = None, cache_dir: str | None = None,
                  key: str = "model_name_or_path", patterns: tuple = tuple(MODEL_FILES)) -> str:
    """A local folder holding the model `name` names (for a hub id: its files matching `patterns`);
    ConfigError (one line) when there is none."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ConfigError(f"{key}: {name} is a file; give the folder that holds config.json and the weights")
    if hub.looks_like_hub_id(name) and not path.parent.is_dir():  # `models/x` with models/ present: a path
        cache = str(hub.hub_cache(cache_dir))
        return _snapshot(name, revision if revision not in (None, "main") else None, cache, hub.offline(),
                         f"{key} {name!r} (no such folder in {Path.cwd()})", tuple(patterns))
    raise ConfigError(
        f"{key}: {name} does not exist (not a local model folder, and not a hub id of the form owner/name)"
    )


def remote_code_files(folder: str | Path) -> list[str]:
    """The config files of a local model folder that map classes to code shipped with it (`auto_map`)."""
    found = []
    for name in CODE_CONFIGS:
        file = Path(folder) / name
        try:
            data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(name)
    return found


def trust_remote_code(folder: str | Path, trust: bool) -> bool:
    """What to pass transformers: True only when asked for and the checkpoint ships code."""
    return trust and bool(remote_code_files(folder))


def check_models(model_args, **others: str | None) -> None:
    """Every model of `model_args` (policy, reference) and `others` (key -> path or hub id, e.g. the
    eval_reward_model) is readable here, and trust_remote_code is safe.

    With `trust_remote_code: true` and an unpinned revision: refused when the model ships code, one
    warning when it does not (it loads natively).
    """
    for key, name in others.items():
        if name:
            resolve_model(name, cache_dir=model_args.cache_dir, key=key, patterns=CHECK_FILES)
    for key in ("model_name_or_path", "ref_model"):
        name = getattr(model_args, key, None)
        if not name:
            continue
        folder = resolve_model(name, revision=model_args.model_revision, cache_dir=model_args.cache_dir, key=key,
                               patterns=CHECK_FILES)
        if model_args.trust_remote_code:
            check_remote_code(folder, model_args.model_revision, key=key, name=name)


def check_remote_code(folder: str, revision: str | None, *, key: str, name: str) -> None:
    code = remote_code_files(folder)
    if not code:
        _warn_no_code(name)
        return
    if not PINNED_REVISION.fullmatch(revision or ""):
        raise ConfigError(
            f"trust_remote_code is true and {key} {name} ships code ({', '.join(code)} has auto_map) but "
            f"model_revision is {revision!r}, not a pinned commit: add `model_revision: <the full 40-character "
            f"commit sha you reviewed>` (a branch or tag can change under you), or remove `trust_remote_code: true`"
        )


@functools.lru_cache(maxsize=16)
def _warn_no_code(name: str) -> None:  # once per model and process
    logger.warning(
        "trust_remote_code: true is not needed for %s (no auto_map in its config.json or "
        "tokenizer_config.json): it loads with transformers' own code and no remote code runs", name
    )
