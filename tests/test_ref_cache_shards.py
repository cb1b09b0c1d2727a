"""The reference cache build split across workers (`trainer/ref_cache/shards.py`) and the cache key's reach.

- Two shards built separately and committed give the log-probs of one whole build (`prepare`), each
  example's reference forward run once (forwards == examples), and a cache that `prepare` then reads as
  a hit from the `file://` root, with no reference forward.
- Trials that differ only in what the policy trains (LoRA rank, targets, learning rate, seed without a
  val_size split) share one key; cutoff_len, template and the data each change it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_ref_cache import make_config
from trainer.ref_cache import key_fields, key_hash, prepare, reference_cache_identity
from trainer.ref_cache.build import load_for_cache
from trainer.ref_cache.fs_storage import storage_for
from trainer.ref_cache.shards import build_shard, commit_build, plan_build, shard_range

pytestmark = pytest.mark.slow


def test_shard_ranges_cover_every_example_once():
    for rows in (1, 2, 7, 8):
        for shards in (1, 2, 3):
            covered = [i for s in range(shards) for i in shard_range(rows, s, shards)]
            assert covered == list(range(rows)), (rows, shards)
    assert [len(shard_range(7, s, 3)) for s in range(3)] == [2, 2, 3]


def test_two_shards_equal_one_build_and_are_read_as_a_hit(tiny_model, data_dir, tmp_path):
    root = f"file://{tmp_path}/sharded"
    cfg = make_config(tiny_model, data_dir, tmp_path / "out", root)  # 6 train / 2 eval pairs
    info, plan = plan_build(cfg)
    assert info.status == "miss" and plan is not None and plan.rows == {"train": 6, "eval": 2}
    records = build_shard(plan, 1, 2) + build_shard(plan, 0, 2)  # any order
    assert sorted((r["split"], r["forwards"]) for r in records) == [("eval", 1), ("eval", 1), ("train", 3), ("train", 3)]
    built = commit_build(plan, records)
    assert (built.status, built.reference_forwards, built.path) == ("miss", 8, f"{root}/{plan.key}")

    whole_cfg = make_config(tiny_model, data_dir, tmp_path / "out", tmp_path / "whole")
    tokenizer, data, seed = load_for_cache(whole_cfg)
    whole_info, whole = prepare(whole_cfg, data, tokenizer, seed=seed, build=True)
    assert whole_info.key == plan.key  # the root is not part of the key
    sharded = storage_for(root).read(plan.key, plan.fields, plan.rows)
    for split in ("train", "eval"):
        for name in whole[split].column_names:
            got, want = sharded[split].column(name).to_numpy(), whole[split].column(name).to_numpy()
            if name.endswith("_logps"):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{split} {name}")
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{split} {name}")

    hit_info, tables = prepare(cfg, data, tokenizer, seed=seed, build=False)
    assert (hit_info.status, hit_info.reference_forwards, hit_info.path) == ("hit", 0, built.path)
    assert tables["train"].equals(sharded["train"])
    assert plan_build(cfg) == (hit_info, None)


def test_key_is_shared_across_what_the_policy_trains(tiny_model, data_dir, tiny, tmp_path):
    def key(**overrides) -> tuple[str, str | None]:
        cfg = make_config(tiny_model, data_dir, tmp_path / "out", tmp_path / "cache", finetuning_type="lora",
                          val_size=0, do_eval=False, eval_strategy="no", **overrides)
        _, data, seed = load_for_cache(cfg)
        return key_hash(key_fields(cfg, data, seed=seed, root=tmp_path / "cache")), reference_cache_identity(cfg)

    base, base_identity = key()
    for same in ({"lora_rank": 16}, {"lora_target": "q_proj,v_proj"}, {"learning_rate": 1e-4}, {"seed": 8},
                 {"lora_rank": 2, "lora_target": "o_proj", "learning_rate": 3e-3, "seed": 123}):
        assert key(**same) == (base, base_identity), same
    changed = [key(cutoff_len=64), key(template="chatml"), key(dataset_dir=str(tiny["data"]))]
    assert len({k for k, _ in changed} | {base}) == 4
    assert all(identity != base_identity for _, identity in changed)
