"""Hugging Face hub repositories (datasets and models) through the local hub cache, one rule for both.

`snapshot(repo_id, repo_type=...)` returns the local folder of a repo's snapshot: downloaded into the hub
cache when the hub can be reached, read from the cache when it cannot or when `HF_HUB_OFFLINE=1` (a
cluster whose nodes share a pre-filled `HF_HOME`). The environment is read at each call, not at import
(`huggingface_hub` reads `HF_HOME` / `HF_HUB_OFFLINE` once when first imported, before a job or a test
may set them): `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_TOKEN` for
gated and private repos. A repo that is neither reachable nor cached is one ConfigError line saying
what to run (`hf download ...`) where the hub can be reached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.errors import ConfigError

# `owner/name` as the hub spells repo ids (a bare name is a legacy canonical repo: still an id).
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_TRUE = ("1", "true", "yes", "on")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")  # `a/b.json` is a path, not a repo


def offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE) is on."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The hub cache folder an explicit `cache_dir` names, else the one the environment names now."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_hub_id(value: str) -> bool:
    """`owner/name` that is not a path a user meant (./x, /x, ~/x, x/y/z, a file extension)."""
    if value.startswith((".", "/", "~")) or value.count("/") != 1:
        return False
    return bool(HUB_ID.fullmatch(value)) and Path(value).suffix.lower() not in DATA_SUFFIXES


def fetch_command(repo_id: str, repo_type: str, revision: str | None) -> str:
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    rev = f" --revision {revision}" if revision and revision != "main" else ""
    return f"hf download{kind} {repo_id}{rev}"


def snapshot(
    repo_id: str,
    *,
    repo_type: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    allow_patterns: list[str] | None = None,
    what: str,
) -> Path:
    """Local folder of `repo_id` at `revision` (default main); `what` names it in errors ("dataset 'x'")."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache(cache_dir)
    where = f"{what}: {repo_type} repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    fetch = fetch_command(repo_id, repo_type, revision)
    try:
        folder = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline(),
            allow_patterns=allow_patterns,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except (GatedRepoError, RepositoryNotFoundError) as err:
        raise ConfigError(
            f"{where} is not found or is gated on the hub ({type(err).__name__}); check the id, and for gated "
            f"or private repos set HF_TOKEN on every node"
        ) from None
    except HFValidationError as err:
        raise ConfigError(f"{where}: not a valid hub id ({' '.join(str(err).split())})") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{where}: the revision does not exist on the hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        reason = "HF_HUB_OFFLINE is set" if offline() else f"the hub cannot be reached ({type(err).__name__})"
        raise ConfigError(
            f"{where} is not in the hub cache {cache} and {reason}; fetch it where the hub can be reached "
            f"with `{fetch}` (same HF_HOME), or point at a local copy"
        ) from None
    return Path(folder)


def cached_file(repo_id: str, filename: str, *, repo_type: str, revision: str | None,
                cache_dir: str | Path | None = None) -> Path | None:
    """`filename` of a cached snapshot, or None when the repo or the file is not in the cache (no download)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache(cache_dir)),
                                   revision=revision, repo_type=repo_type)
    return Path(found) if isinstance(found, str) else None
