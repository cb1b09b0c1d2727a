"""Reference log-prob cache (trainer/ref_cache/) on the tiny model.

- Training from the cache gives the losses and every logged metric of training with a live reference
  (within 1e-5, float32), for sigmoid, ipo (averaged log-probs), kto_pair and kto, full FT and LoRA.
- With the cache no reference model exists (Reference.kind cached, no frozen copy) and none runs; the
  build passes each train and eval example through the reference exactly once.
- The key: same config -> hit; cutoff_len, template, one byte of the weights, max_samples -> miss;
  loss, beta and finetuning_type (same reference) -> hit.
- A truncated or bit-flipped Parquet file, or a manifest with a wrong checksum, is never parsed and is
  rebuilt; training on the rebuilt cache still equals training without one.
- orpo / simpo never create a cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import ref_cache
from trainer.config import load_config
from trainer.ref_cache import CacheInvalid, ensure_reference_cache, file_sha256, read_cache, write_cache
from trainer.workflow import build_trainer, run_training

TOLERANCE = 1e-5
NOT_COMPARED = ("runtime", "per_second", "total_flos")  # wall-clock facts, not numbers of the run

pytestmark = pytest.mark.slow


def make_config(model: Path, data_dir: Path, out: Path, cache: Path, **overrides):
    """A short run with evaluation: 6 train / 2 eval pairs (kto: 12 / 4), batch 2, 3 steps, eval at 2 and end."""
    raw = {
        "model_name_or_path": str(model),
        "stage": "dpo",
        "do_train": True,
        "do_eval": True,
        "finetuning_type": "full",
        "dataset": "pairs",
        "dataset_dir": str(data_dir),
        "template": "default",
        "cutoff_len": 96,
        "val_size": 0.25,
        "pref_beta": 0.1,
        "output_dir": str(out),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 3,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 7,
        "use_ray": False,
        "disable_tqdm": True,
        "ref_cache_dir": str(cache),
    }
    if overrides.get("stage") == "kto":
        raw.update(dataset="kto", per_device_train_batch_size=4, per_device_eval_batch_size=4)
    if overrides.get("finetuning_type") == "lora":
        raw.update(lora_rank=4, learning_rate=1e-2)
    raw.update(overrides)
    return load_config(raw)


@pytest.fixture(scope="module")
def live_run(tiny_model, data_dir, tmp_path_factory):
    """Uncached runs, memoised by their overrides (several tests compare against the same one)."""
    runs = {}

    def run(**overrides):
        key = json.dumps(overrides, sort_keys=True)
        if key not in runs:
            out = tmp_path_factory.mktemp("live")
            runs[key] = run_training(make_config(tiny_model, data_dir, out, out / "unused", precompute_ref="never",
                                                 **overrides))
        return runs[key]

    return run


def assert_same_history(uncached: list[dict], cached: list[dict]) -> None:
    """Same log entries, same keys, every number within TOLERANCE."""
    assert len(uncached) == len(cached)
    for a, b in zip(uncached, cached):
        assert a.keys() == b.keys()
        for name, value in a.items():
            if any(part in name for part in NOT_COMPARED):
                continue
            assert math.isfinite(value), name
            assert abs(value - b[name]) <= TOLERANCE, (name, value, b[name])


# ---- equality with the live reference ------------------------------------------------------------------


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "kto_pair", "kto"])
def test_cached_run_equals_uncached_run(tiny_model, data_dir, tmp_path, live_run, loss, finetuning_type):
    stage = {"stage": "kto"} if loss == "kto" else {"pref_loss": loss}
    common = dict(finetuning_type=finetuning_type, **stage)
    cache = tmp_path / "cache"
    live = live_run(**common)
    built = ensure_reference_cache(make_config(tiny_model, data_dir, tmp_path / "x", cache, **common))
    cached = run_training(make_config(tiny_model, data_dir, tmp_path / "cached", cache, precompute_ref="auto",
                                      **common))

    assert live.ref_cache["status"] == "off" and live.reference_forwards > 0
    assert built.status == "miss" and built.reference_forwards == sum(built.rows.values())
    assert cached.ref_cache["status"] == "hit" and cached.ref_cache["key"] == built.key
    assert cached.reference_forwards == 0
    assert_same_history(live.log_history, cached.log_history)
    metrics = [k for k in live.log_history[0] if k.startswith(("rewards/", "logps/"))]
    assert len(metrics) >= 5 and any("eval_loss" in e for e in cached.log_history)
    assert cached.metrics["eval_loss"] == pytest.approx(live.metrics["eval_loss"], abs=TOLERANCE)


def test_with_the_cache_no_reference_model_exists_or_runs(tiny_model, data_dir, tmp_path):
    """Full FT: no frozen copy. The build forwards each train and eval pair once; training forwards none."""
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "cache", precompute_ref="always")
    trainer, facts = build_trainer(cfg)
    info = facts["ref_cache"]
    assert trainer.reference.kind == "cached" and trainer.reference.model is None
    assert info.status == "miss" and info.rows == {"train": 6, "eval": 2}
    assert info.reference_forwards == 8 == len(trainer.train_dataset) + len(trainer.eval_dataset)
    assert {"ref_chosen_logps", "ref_rejected_count"} <= set(trainer.train_dataset.column_names)
    trainer.train()
    trainer.evaluate()
    assert trainer.reference_forwards == 0

    result = run_training(cfg)  # a second run: a hit, no forward at all
    assert result.ref_cache["status"] == "hit" and result.reference_forwards == 0
    assert result.ref_cache["tags"] == {"prefsweep.ref_cache": "hit", "prefsweep.ref_cache_build_s": "0.000"}
    written = json.loads((tmp_path / "run" / "ref_cache.json").read_text())
    assert (written["status"], written["run_reference_forwards"]) == ("hit", 0)


def test_lora_with_the_cache_never_disables_the_adapters(tiny_model, data_dir, tmp_path, monkeypatch):
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "cache", precompute_ref="always",
                      finetuning_type="lora")
    trainer, _ = build_trainer(cfg)
    assert trainer.reference.kind == "cached"

    def refuse(*args, **kwargs):
        raise AssertionError("adapters-off reference forward with a cache")

    monkeypatch.setattr(type(trainer.model), "disable_adapter", refuse)
    trainer.train()
    assert trainer.reference_forwards == 0


def test_uncached_kto_counts_one_reference_forward_per_example(tiny_model, data_dir, tmp_path):
    """The counter the sweep benchmark asserts on: examples (completion + its KL row), per forward."""
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", tmp_path / "cache", stage="kto",
                      precompute_ref="never", max_steps=1, eval_strategy="no", do_eval=False)
    result = run_training(cfg)
    assert result.reference_forwards == 4  # one batch of 4
    assert json.loads((tmp_path / "run" / "ref_cache.json").read_text())["run_reference_forwards"] == 4


# ---- the key --------------------------------------------------------------------------------------------


def flip_weight_byte(model_dir: Path) -> None:
    """Rewrite one byte inside the first tensor's data of model.safetensors (header untouched)."""
    path = model_dir / "model.safetensors"
    blob = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(blob[:8], "little")
    blob[data_start + 101] ^= 0x01
    path.write_bytes(bytes(blob))


def test_sweep_driver_builds_once_per_distinct_key(tiny_model, data_dir, tmp_path):
    cache = tmp_path / "cache"
    trials = [make_config(tiny_model, data_dir, tmp_path / f"t{i}", cache, **o) for i, o in enumerate([
        {"pref_loss": "sigmoid"}, {"pref_loss": "ipo", "pref_beta": 0.5}, {"pref_loss": "simpo"},
        {"pref_loss": "kto_pair", "cutoff_len": 64}, {"stage": "kto"},
    ])]
    assert ref_cache.reference_cache_identity(trials[2]) is None
    infos = ref_cache.ensure_reference_caches(trials)
    assert [i.status for i in infos] == ["miss", "miss", "miss"]
    assert len({i.key for i in infos}) == 3
    assert [i.status for i in ref_cache.ensure_reference_caches(trials)] == ["hit", "hit", "hit"]


def test_same_key_hits_and_each_key_field_misses(tiny_model, data_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cache = tmp_path / "cache"

    def ensure(**overrides):
        return ensure_reference_cache(make_config(model, data_dir, tmp_path / "out", cache, **overrides))

    first = ensure()
    assert first.status == "miss" and first.reference_forwards == 8 and first.build_seconds > 0
    again = ensure()
    assert (again.status, again.hit, again.key, again.reference_forwards) == ("hit", True, first.key, 0)
    assert again.build_seconds == 0.0
    # what does not change the reference log-probs shares the cache
    for same in ({"pref_loss": "ipo"}, {"pref_beta": 0.5}, {"finetuning_type": "lora"}, {"learning_rate": 1.0}):
        assert ensure(**same).key == first.key, same

    keys = {first.key}
    for changed in ({"cutoff_len": 64}, {"template": "chatml"}, {"max_samples": 6}):
        info = ensure(**changed)
        assert info.status == "miss" and info.reference_forwards > 0, changed
        keys.add(info.key)
    flip_weight_byte(model)
    info = ensure()
    assert info.status == "miss" and info.reference_forwards == 8
    keys.add(info.key)
    assert len(keys) == 5
    assert len(list(cache.glob("*/manifest.json"))) == 5


def test_weight_hashes_are_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    """Hashing a model's weights is paid once: a same-stamp file is not read again (which is also the
    limit: a rewrite that keeps size, mtime and inode is not seen)."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path, tmp_path / "cache")
    stat = path.stat()
    with path.open("r+b") as f:
        f.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(ref_cache.key, "_HASH_MEMO", {})  # a new process: only the on-disk record remains
    assert file_sha256(path, tmp_path / "cache") == first
    path.write_bytes(b"c" * 1000)
    assert file_sha256(path, tmp_path / "cache") != first


def test_auto_uses_an_existing_cache_and_builds_none(tiny_model, data_dir, tmp_path):
    cache = tmp_path / "cache"
    cfg = make_config(tiny_model, data_dir, tmp_path / "a", cache, max_steps=1, eval_strategy="no")
    result = run_training(cfg)
    assert result.ref_cache["status"] == "off" and result.reference_forwards > 0
    assert not cache.exists()
    ensure_reference_cache(cfg)
    result = run_training(cfg)
    assert result.ref_cache["status"] == "hit" and result.reference_forwards == 0


# ---- corruption -----------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(blob))


def wrong_manifest_checksum(path: Path) -> None:
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["train"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [truncate, flip_bit, wrong_manifest_checksum])
def test_damaged_cache_is_never_read_and_is_rebuilt(tiny_model, data_dir, tmp_path, monkeypatch, live_run, damage):
    cache = tmp_path / "cache"
    cfg = make_config(tiny_model, data_dir, tmp_path / "cached", cache, precompute_ref="always")
    built = ensure_reference_cache(cfg)
    damage(built.path / "train.parquet")

    parsed = []
    real_read_table = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: parsed.append(1) or real_read_table(*a, **k))
    with pytest.raises(CacheInvalid):
        read_cache(built.path, json.loads((built.path / "manifest.json").read_text())["key_fields"], built.rows)
    assert parsed == []  # the checksum failed before any Parquet was parsed
    # precompute_ref auto finds it, does not read it, and trains with a live reference
    off, tables = ref_cache.prepare(
        make_config(tiny_model, data_dir, tmp_path / "x", cache), *_data_of(cfg), seed=7, build=False
    )
    assert tables is None and off.status == "off" and "checksum" in off.reason
    monkeypatch.undo()

    result = run_training(cfg)
    assert result.ref_cache["status"] == "miss" and result.ref_cache["reason"].startswith("rebuilt")
    assert result.ref_cache["path"] == str(built.path) and result.reference_forwards == 8
    read_cache(built.path, json.loads((built.path / "manifest.json").read_text())["key_fields"], built.rows)
    assert_same_history(live_run(finetuning_type="full", pref_loss="sigmoid").log_history, result.log_history)


def _data_of(cfg):
    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    return load_preference_data(cfg.data, tokenizer, stage="dpo", seed=7), tokenizer


def test_partial_parquet_with_matching_checksum_or_wrong_rows_is_rejected(tiny_model, data_dir, tmp_path):
    """A manifest written for a partial file (checksum matches) still fails: unreadable or wrong row count."""
    built = ensure_reference_cache(make_config(tiny_model, data_dir, tmp_path / "o", tmp_path / "cache"))
    manifest_path = built.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    train = built.path / "train.parquet"
    good = pq.read_table(train)

    def rewrite(blob: bytes) -> None:
        import hashlib

        train.write_bytes(blob)
        manifest["files"]["train"]["sha256"] = hashlib.sha256(blob).hexdigest()
        manifest_path.write_text(json.dumps(manifest))

    rewrite(good.to_pandas().to_json().encode()[:100])
    with pytest.raises(CacheInvalid, match="not readable Parquet"):
        read_cache(built.path, manifest["key_fields"], built.rows)
    sink = pa.BufferOutputStream()
    pq.write_table(good.slice(0, 3), sink)
    rewrite(sink.getvalue().to_pybytes())
    with pytest.raises(CacheInvalid, match="rows"):
        read_cache(built.path, manifest["key_fields"], built.rows)
    other = dict(manifest["key_fields"], cutoff_len=1)
    with pytest.raises(CacheInvalid, match="key fields"):
        read_cache(built.path, other, built.rows)


def test_concurrent_builders_leave_one_complete_cache(tmp_path):
    fields = {"format": 1, "stage": "dpo", "x": 1}
    table = pa.table({"index": [0, 1], "ref_chosen_logps": [-1.0, -2.0], "ref_chosen_count": [1, 2],
                      "ref_rejected_logps": [-3.0, -4.0], "ref_rejected_count": [3, 4]})
    errors = []

    def build():
        try:
            write_cache(tmp_path, "k", fields, {"train": table}, {})
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert read_cache(tmp_path / "k", fields, {"train": 2})["train"].equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp or trash directory left
    # an invalid cache in the way is replaced, a valid one kept
    (tmp_path / "k" / "train.parquet").write_bytes(b"junk")
    write_cache(tmp_path, "k", fields, {"train": table}, {})
    assert read_cache(tmp_path / "k", fields, {"train": 2})["train"].equals(table)


# ---- reference-free losses ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_never_create_a_cache(tiny_model, data_dir, tmp_path, loss):
    cache = tmp_path / "cache"
    cfg = make_config(tiny_model, data_dir, tmp_path / "run", cache, pref_loss=loss, precompute_ref="always",
                      max_steps=1, eval_strategy="no")
    assert ensure_reference_cache(cfg).status == "off"
    result = run_training(cfg)
    assert result.ref_cache["status"] == "off" and "reference-free" in result.ref_cache["reason"]
    assert result.reference_forwards == 0
    assert not cache.exists()
