"""The tokenized-dataset cache (`tokenized_cache: true`, on for a sweep's trials): tokenize once, read by
every later run with the same data and settings; another cutoff, template or data file is another entry;
a corrupt entry is rebuilt with a warning. Tokens are compared with an uncached tokenization."""

from __future__ import annotations

import json
import logging
import shutil

import trainer.data.pipeline as pipeline
from trainer.config import load_config
from trainer.data import load_preference_data
from trainer.models import load_tokenizer
from trainer.ref_cache.key import token_cache_root


def config(tiny, tmp_path, **overrides):
    return load_config({
        "model_name_or_path": str(tiny["model"]), "stage": "dpo", "finetuning_type": "full",
        "dataset": "pairs", "dataset_dir": str(tiny["data"]), "template": "default", "cutoff_len": 256,
        "output_dir": str(tmp_path / "out"), "ref_cache_dir": str(tmp_path / "cache"), "use_ray": False,
        "report_to": "none", "tokenized_cache": True, **overrides,
    })


def load(cfg, *, cached: bool = True, seed: int = 42):
    return load_preference_data(cfg.data, load_tokenizer(cfg.model), stage="dpo", seed=seed,
                                cache_dir=cfg.output_dir / "datasets_cache",
                                token_cache=token_cache_root(cfg) if cached else None)


def rows(data):
    return data.train.to_dict()


def entries(cfg):
    root = token_cache_root(cfg)
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def no_tokenizing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(pipeline, "build", fail)


def test_the_second_run_reads_the_tokens_of_the_first(tiny, tmp_path, monkeypatch):
    cfg = config(tiny, tmp_path)
    assert token_cache_root(cfg) == tmp_path / "cache" / "tokenized"
    uncached = load(cfg, cached=False)
    first = load(cfg)  # miss: tokenizes and writes the entry
    assert len(entries(cfg)) == 1
    no_tokenizing(monkeypatch)
    second = load(cfg, seed=7)  # hit; without a val_size split the seed picks no row, so it shares the entry
    assert len(uncached.train) == 32
    assert rows(first) == rows(second) == rows(uncached)
    assert first.fingerprint == second.fingerprint == uncached.fingerprint
    assert second.skipped == uncached.skipped
    assert entries(cfg) == entries(cfg)[:1]


def test_another_cutoff_template_or_data_file_is_another_entry(tiny, tmp_path):
    cfg = config(tiny, tmp_path)
    base = load(cfg)
    short = config(tiny, tmp_path, cutoff_len=32)
    truncated = load(short)
    assert len(entries(cfg)) == 2
    assert truncated.fingerprint == load(short, cached=False).fingerprint != base.fingerprint
    assert max(len(ids) for ids in truncated.train["chosen_input_ids"]) <= 32
    load(config(tiny, tmp_path, template="llama3"))
    assert len(entries(cfg)) == 3
    data = tmp_path / "data"  # the same dataset name, one row edited
    shutil.copytree(tiny["data"], data)
    pairs = json.loads((data / "pairs.json").read_text())
    pairs[0]["chosen"]["value"] = "Edited. " + pairs[0]["chosen"]["value"]
    (data / "pairs.json").write_text(json.dumps(pairs))
    edited = load(config(tiny, tmp_path, dataset_dir=str(data)))
    assert len(entries(cfg)) == 4
    assert edited.train["chosen_input_ids"][0] != base.train["chosen_input_ids"][0]
    assert edited.train["chosen_input_ids"][1:] == base.train["chosen_input_ids"][1:]


def test_a_corrupt_entry_is_rebuilt_with_a_warning(tiny, tmp_path, monkeypatch, caplog):
    cfg = config(tiny, tmp_path)
    uncached = load(cfg, cached=False)
    load(cfg)
    (entry,) = [token_cache_root(cfg) / name for name in entries(cfg)]
    (arrow,) = entry.glob("train/*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])  # a half-written file
    with caplog.at_level(logging.WARNING, logger="trainer.data.token_cache"):
        rebuilt = load(cfg)
    assert f"tokenized-dataset cache entry {entry} is unusable" in caplog.text
    assert rows(rebuilt) == rows(uncached)
    no_tokenizing(monkeypatch)
    assert load(cfg).fingerprint == uncached.fingerprint  # the rebuilt entry is read again


def test_tokens_that_differ_from_their_checksum_are_rebuilt(tiny, tmp_path, caplog):
    """A readable entry whose token ids were changed after writing: the sha256 written with them catches it."""
    cfg = config(tiny, tmp_path)
    uncached = load(cfg, cached=False)
    load(cfg)
    (entry,) = [token_cache_root(cfg) / name for name in entries(cfg)]
    meta_file = entry / "prefsweep_tokenized.json"
    meta = json.loads(meta_file.read_text())
    meta["fingerprint"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="trainer.data.token_cache"):
        again = load(cfg)
    assert "its tokens do not match the sha256 written with them" in caplog.text
    assert again.fingerprint == uncached.fingerprint
    assert json.loads(meta_file.read_text())["fingerprint"] == uncached.fingerprint


def test_overwrite_cache_tokenizes_again(tiny, tmp_path, monkeypatch):
    cfg = config(tiny, tmp_path)
    load(cfg)
    calls = []
    real = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: calls.append(1) or real(*a, **k))
    load(config(tiny, tmp_path, overwrite_cache=True))
    assert calls == [1]
