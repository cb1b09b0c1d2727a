"""Datasets of a config -> tokenized train / eval sets, in LLaMA-Factory 0.9.5's order of steps.

1. each dataset: read, `num_samples`, `max_samples` (first N), convert (`sources.load_source`);
2. concatenate the train datasets, and the eval datasets;
3. `val_size`: `train_test_split(test_size, seed)` of the train rows (count when >= 1, else fraction);
4. drop the bad rows, tokenize with `datasets.map` (batched, 1000 per batch as LF, num_proc =
   preprocessing_num_workers), cached on disk under a key of everything the result depends on
   (data files, dataset entries, split, tokenizer, template, cutoff_len and this package's code), so
   re-runs and other workers reuse it unless `overwrite_cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from trainer.data.conversion import EMPTY_AFTER_TRUNCATION
from trainer.data.dataset_info import DatasetAttr, get_dataset_attr
from trainer.data.encoding import MAP_BATCH_SIZE, FeedbackEncoder, PairwiseEncoder
from trainer.data.reading import data_files
from trainer.data.sources import Source, load_source
from trainer.data.templates import get_template_and_fix_tokenizer, template_options
from trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

STAGES = ("dpo", "kto")
_CODE_FILES = ("conversion.py", "encoding.py", "reading.py", "sources.py", "pipeline.py", "trl_format.py",
               "hub_datasets.py", "dataset_info.py", "dataset_attr.py")


def dataset_names(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return list(value)


def _sha256(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _code_digest() -> str:
    here = Path(__file__).parent
    files = [here / name for name in _CODE_FILES] + sorted((here / "templates").glob("*.py"))
    return _sha256(*[path.read_text(encoding="utf-8") for path in files])


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        vocab = backend.to_str()
    else:  # slow tokenizers: let datasets' hasher pickle it
        from datasets.fingerprint import Hasher

        vocab = Hasher.hash(tokenizer)
    specials = {
        k: (getattr(tokenizer, k), getattr(tokenizer, f"{k}_id"))
        for k in ("bos_token", "eos_token", "pad_token")
    }
    return _sha256(type(tokenizer).__name__, vocab, specials, tokenizer.chat_template)


def _source_key(source: Source, max_samples: int | None, seed: int) -> str:
    return _attr_key(source.attr, max_samples, seed)


def _attr_key(attr: DatasetAttr, max_samples: int | None, seed: int) -> str:
    fields = {k: (str(v) if k == "path" else v) for k, v in vars(attr).items()}
    # a hub snapshot's folder name is its commit sha: the data's identity; local files are hashed
    files = attr.path.name if attr.hub_url else _file_digest(data_files(attr.path))
    return _sha256(fields, files, max_samples, seed if attr.num_samples else None)


def tokenized_key(data_args: Any, tokenizer: Any, *, stage: str, seed: int, do_train: bool) -> str:
    """Everything `build`'s result depends on, without reading a row: the data files (hashed) and their
    `dataset_info.json` entries, max_samples, the split, stage, template, tokenizer, cutoff_len and this
    package's code. The key of the tokenized-dataset cache (`token_cache`); fixes `tokenizer` for the
    template, as `build` does."""
    template = get_template_and_fix_tokenizer(tokenizer, data_args.template, **template_options(data_args))
    val_size = float(data_args.val_size or 0.0)
    keys = [[_attr_key(get_dataset_attr(name, data_args.dataset_dir), data_args.max_samples, seed)
             for name in dataset_names(value)] for value in (data_args.dataset, data_args.eval_dataset)]
    seeded = val_size > 1e-6 or data_args.mix_strategy != "concat"  # else the seed picks no row
    return _sha256(
        stage, repr(template), tokenizer_digest(tokenizer), data_args.cutoff_len, _code_digest(), keys,
        data_args.mix_strategy, interleave_probs(data_args), val_size, seed if seeded else None, do_train,
    )


def interleave_probs(data_args: Any) -> list[float] | None:
    probs = data_args.interleave_probs
    if probs is None:
        return None
    return [float(p) for p in probs.split(",")] if isinstance(probs, str) else [float(p) for p in probs]


def _merge(sources: list[Source], data_args: Any, seed: int) -> datasets.Dataset | None:
    """LF's `merge_dataset`: concatenated, or interleaved with `interleave_probs` (seeded); `interleave_under`
    stops when the first dataset runs out, `interleave_over` when the last does (the others repeat)."""
    if not sources:
        return None
    if len(sources) == 1:
        return sources[0].rows
    rows = [s.rows for s in sources]
    if data_args.mix_strategy == "concat":
        return datasets.concatenate_datasets(rows)
    return datasets.interleave_datasets(
        rows,
        probabilities=interleave_probs(data_args),
        seed=seed,
        stopping_strategy="first_exhausted" if data_args.mix_strategy.endswith("under") else "all_exhausted",
    )


def _split(rows: datasets.Dataset, val_size: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    # LF passes int(val_size) when > 1; val_size 1 (a float 1.0 there) fails in LF; here it means one row.
    test_size: float | int = int(val_size) if val_size >= 1 else val_size
    try:
        parts = rows.train_test_split(test_size=test_size, seed=seed)
    except ValueError as err:
        raise ConfigError(f"val_size={val_size} cannot split {len(rows)} rows: {err}") from None
    return parts["train"], parts["test"]


def _usable(rows: datasets.Dataset) -> datasets.Dataset:
    keep = [i for i, reason in enumerate(rows["_skip"]) if not reason]
    return rows if len(keep) == len(rows) else rows.select(keep)


def _tokenize(
    rows: datasets.Dataset,
    encoder: PairwiseEncoder | FeedbackEncoder,
    *,
    key: str,
    cache_dir: Path,
    data_args: Any,
    split: str,
) -> datasets.Dataset:
    cache_dir.mkdir(parents=True, exist_ok=True)
    num_proc = data_args.preprocessing_num_workers
    if num_proc is not None and num_proc <= 1:
        num_proc = None
    return rows.map(
        encoder,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        num_proc=num_proc,
        remove_columns=rows.column_names,
        cache_file_name=str(cache_dir / f"tokenized-{key[:32]}.arrow"),
        new_fingerprint=key[:32],
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenizing {split} set",
    )


def _nothing_left(split: str, rows: datasets.Dataset, dropped: int, cutoff_len: int) -> str:
    """Why a split is empty: its datasets, the bad rows per reason and the truncation drops."""
    sources = ", ".join(dict.fromkeys(rows["_source"])) or "no dataset"
    bad = Counter(reason for reason in rows["_skip"] if reason)
    reasons = f" ({', '.join(f'{r}: {n}' for r, n in bad.items())})" if bad else ""
    hint = "; raise cutoff_len or shorten the prompts" if dropped else ""
    return (
        f"the {split} set has no usable examples ({sources}: {len(rows)} rows, {sum(bad.values())} bad"
        f"{reasons}, {dropped} {EMPTY_AFTER_TRUNCATION} at cutoff_len={cutoff_len}){hint}"
    )


def tokenized_fingerprint(*parts: datasets.Dataset | None) -> str:
    """sha256 of the token columns of `parts` (None counts as absent); independent of Arrow chunking."""
    import pyarrow.compute as pc

    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"<none>" if part is None else f"<rows {len(part)}>".encode())
        if part is None or len(part) == 0:
            continue
        table = part.with_format("arrow")[:]
        for name in sorted(table.column_names):
            column = table.column(name)
            digest.update(name.encode())
            if hasattr(column.type, "value_type"):  # list<int>: lengths then values, as int64
                digest.update(pc.list_value_length(column).to_numpy().astype(np.int64).tobytes())
                values = pc.list_flatten(column)
                digest.update(values.to_numpy().astype(np.int64).tobytes())
            else:
                digest.update(column.to_numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


def build(
    data_args: Any,
    tokenizer: Any,
    *,
    stage: str,
    seed: int,
    do_train: bool,
    cache_dir: str | Path | None,
) -> tuple[datasets.Dataset | None, datasets.Dataset | None, dict[str, int]]:
    """(train, eval, skipped) for `load_preference_data`."""
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} has no preference data; use one of {list(STAGES)}")
    train_names, eval_names = dataset_names(data_args.dataset), dataset_names(data_args.eval_dataset)
    val_size = float(data_args.val_size or 0.0)
    if eval_names and val_size > 1e-6:
        raise ConfigError("val_size and eval_dataset are both set; use one way to get evaluation data")
    if do_train and not train_names:
        raise ConfigError("dataset is required to train (a name from dataset_dir/dataset_info.json)")
    template = get_template_and_fix_tokenizer(tokenizer, data_args.template, **template_options(data_args))
    cache = (
        Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "prefsweep"
    )

    rng = np.random.RandomState(seed)  # LF samples `num_samples` from numpy's global RNG after set_seed(seed)
    need_train_rows = bool(train_names) and (do_train or (val_size > 1e-6 and not eval_names))
    load = dict(
        dataset_dir=data_args.dataset_dir,
        stage=stage,
        max_samples=data_args.max_samples,
        strict=data_args.strict_data,
        rng=rng,
    )
    train_sources = [load_source(name, **load) for name in train_names] if need_train_rows else []
    eval_sources = [load_source(name, **load) for name in eval_names]
    skipped: Counter = Counter()
    for source in train_sources + eval_sources:
        skipped.update(source.skipped)

    train_rows, eval_rows = _merge(train_sources, data_args, seed), _merge(eval_sources, data_args, seed)
    train_keys = [_source_key(s, data_args.max_samples, seed) for s in train_sources]
    eval_keys = [_source_key(s, data_args.max_samples, seed) for s in eval_sources]
    # eval rows may depend on the train sources too: num_samples draws from one RNG, train datasets first
    mix = (data_args.mix_strategy, interleave_probs(data_args), seed)
    train_key, eval_key = _sha256(train_keys, mix), _sha256(train_keys, eval_keys, mix)
    if train_rows is not None and val_size > 1e-6:
        train_rows, eval_rows = _split(train_rows, val_size, seed)
        train_key, eval_key = (
            _sha256(train_key, "train", val_size, seed),
            _sha256(train_key, "eval", val_size, seed),
        )
    if not do_train:
        train_rows = None

    encoder_cls = PairwiseEncoder if stage == "dpo" else FeedbackEncoder
    encoder = encoder_cls(template=template, tokenizer=tokenizer, cutoff_len=data_args.cutoff_len)
    common = _sha256(
        stage, repr(template), tokenizer_digest(tokenizer), data_args.cutoff_len, _code_digest()
    )
    result: dict[str, datasets.Dataset | None] = {}
    for split, rows, key in (("train", train_rows, train_key), ("eval", eval_rows, eval_key)):
        if rows is None:
            result[split] = None
            continue
        usable = _usable(rows)
        tokenized = _tokenize(
            usable,
            encoder,
            key=_sha256(common, key, split),
            cache_dir=cache,
            data_args=data_args,
            split=split,
        )
        dropped = len(usable) - len(tokenized)
        if dropped:
            skipped[EMPTY_AFTER_TRUNCATION] += dropped
            logger.warning(
                "%s set: dropped %d of %d examples whose response is empty after truncation to cutoff_len=%d",
                split,
                dropped,
                len(usable),
                data_args.cutoff_len,
            )
        if len(tokenized) == 0:
            raise DataError(_nothing_left(split, rows, dropped, data_args.cutoff_len))
        result[split] = tokenized
    return result["train"], result["eval"], dict(skipped)
