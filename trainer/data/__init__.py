"""Preference data: `dataset_info.json` datasets -> tokenized pairwise (dpo) or unpaired (kto) sets + collators.

    data = load_preference_data(cfg.data, tokenizer, stage="dpo", seed=training_args.seed)
    collator = make_collator(tokenizer, stage="dpo")

`load_preference_data` edits `tokenizer` in place for the chosen template, as LLaMA-Factory does (eos /
pad / stop words): save that tokenizer with the model. Token ids equal LLaMA-Factory 0.9.5's for the same
tokenizer, data and config. Modules: `reading` (files), `conversion` (alpaca / sharegpt rows, bad-row
reasons), `sources` (one dataset, skip report), `templates`, `encoding` (ids, labels, truncation),
`pipeline` (merge, split, tokenize, cache), `collator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

    from trainer.data.collator import KTOCollator, PairwiseCollator


@dataclass
class PreferenceData:
    train: datasets.Dataset | None
    """Tokenized training set (None when do_train is false)."""
    eval: datasets.Dataset | None
    """Tokenized evaluation set: eval_dataset, or the val_size split; None without either."""
    skipped: dict[str, int]
    """Skipped rows per reason (`conversion.REASONS`), over all datasets, train and eval."""
    fingerprint: str
    """sha256 of the train and eval token columns: equal data gives an equal fingerprint."""


def load_preference_data(
    data_args: Any,
    tokenizer: Any,
    *,
    stage: str,
    seed: int,
    do_train: bool = True,
    cache_dir: str | Path | None = None,
    token_cache: str | Path | None = None,
) -> PreferenceData:
    """Load, convert, split and tokenize the datasets of `data_args` (a `config.DataArguments`).

    stage "dpo" takes `ranking: true` datasets and yields chosen_/rejected_ input_ids, attention_mask,
    labels; stage "kto" takes datasets with a `kto_tag` column and yields input_ids, attention_mask,
    labels, their `kl_` counterparts and kto_tags. `seed` seeds the val_size split (the training seed).
    `cache_dir` holds the tokenized cache (default: the `datasets` cache, under `prefsweep/`).
    With `tokenized_path` set, the tokenized sets are saved there, or loaded from there when it exists
    (`tokenized_path.py`); else with `token_cache` (a folder), from or into its entry for this data,
    tokenizer and settings (`token_cache.py`: tokenize once per sweep).
    Raises ConfigError for datasets the stage cannot use, DataError for unusable data.
    """
    from trainer.data import tokenized_path as saved
    from trainer.data.pipeline import build, tokenized_fingerprint, tokenizer_digest
    from trainer.data.templates import get_template_and_fix_tokenizer, template_options

    path = getattr(data_args, "tokenized_path", None)
    if path is not None and saved.has_tokenized_data(path):
        get_template_and_fix_tokenizer(tokenizer, data_args.template, **template_options(data_args))
        expected = saved.settings(data_args, tokenizer, stage, tokenizer_digest(tokenizer))
        train, eval_ = saved.load(path, expected)
        train, skipped = (train if do_train else None), {}
    elif path is None and token_cache is not None:
        from trainer.data import token_cache as cache
        from trainer.data.pipeline import tokenized_key

        key = tokenized_key(data_args, tokenizer, stage=stage, seed=seed, do_train=do_train)
        (train, eval_, skipped), fingerprint, _ = cache.load_or_build(
            token_cache, key, saved.settings(data_args, tokenizer, stage, tokenizer_digest(tokenizer)),
            lambda: build(data_args, tokenizer, stage=stage, seed=seed, do_train=do_train, cache_dir=cache_dir),
            refresh=bool(getattr(data_args, "overwrite_cache", False)),
        )
        return PreferenceData(train=train, eval=eval_, skipped=skipped, fingerprint=fingerprint)
    else:
        train, eval_, skipped = build(
            data_args, tokenizer, stage=stage, seed=seed, do_train=do_train, cache_dir=cache_dir
        )
        if path is not None:
            saved.save(path, train, eval_, saved.settings(data_args, tokenizer, stage, tokenizer_digest(tokenizer)))
    return PreferenceData(
        train=train, eval=eval_, skipped=skipped, fingerprint=tokenized_fingerprint(train, eval_)
    )


def make_collator(tokenizer: Any, *, stage: str) -> PairwiseCollator | KTOCollator:
    """The batch collator of `stage`: pairwise (chosen block, then rejected block) for dpo, KTO for kto."""
    from trainer.data.collator import KTOCollator, PairwiseCollator

    if stage == "dpo":
        return PairwiseCollator(tokenizer, pad_to_multiple_of=8)
    if stage == "kto":
        return KTOCollator(tokenizer, pad_to_multiple_of=8)
    from trainer.errors import ConfigError

    raise ConfigError(f"stage {stage!r} has no preference collator; use dpo or kto")


__all__ = ["PreferenceData", "load_preference_data", "make_collator"]
