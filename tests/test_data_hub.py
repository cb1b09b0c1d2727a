"""Hub datasets from a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1 (the cache layout is built in a
temp HF_HOME: datasets--<owner>--<name>/refs/<ref> -> snapshots/<sha>/...): subset, split, folder,
revision, a parquet-only repo, REMOTE: dataset_dir, a TRL hub id; an uncached one is one line naming
the entry, the hub id and the `hf download` command, raised by the config check (the driver's)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from trainer.config import DataArguments, load_config
from trainer.data import load_preference_data
from trainer.errors import ConfigError

SHA = "1" * 40
SHA_V1 = "2" * 40
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
PAIRS = {"formatting": "sharegpt", "ranking": True, "tags": TAGS,
         "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}}


def pairs(tag: str, n: int = 4) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} question {i}?"}],
             "chosen": {"role": "assistant", "content": f"{tag} good {i}"},
             "rejected": {"role": "assistant", "content": f"{tag} bad {i}"}} for i in range(n)]


def cached_repo(home: Path, repo_id: str, files: dict[str, object], *, sha: str = SHA, ref: str = "main") -> Path:
    """A dataset repo snapshot in the hub cache of HF_HOME=`home` (rows -> parquet or JSON Lines by suffix)."""
    repo = home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(sha)
    snap = repo / "snapshots" / sha
    for name, content in files.items():
        path = snap / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif name.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(content), path)
        else:
            path.write_text("\n".join(json.dumps(r) for r in content))
    return snap


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def data_dir(tmp_path: Path, **entries) -> Path:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps(entries))
    return root


def prompts(tokenizer_dir, root, dataset: str, dataset_dir: str | None = None) -> list[str]:
    """The decoded chosen prompt+response of every tokenized training row."""
    args = DataArguments(dataset=dataset, dataset_dir=dataset_dir or str(root), template="default", cutoff_len=128)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = load_preference_data(args, tokenizer, stage="dpo", seed=0, cache_dir=root / "cache")
    return [tokenizer.decode(ids) for ids in data.train["chosen_input_ids"]]


README = """---
configs:
- config_name: en
  data_files:
  - split: train
    path: en/train.jsonl
  - split: test
    path: en/test.jsonl
- config_name: de
  data_files:
  - split: train
    path: de/train.jsonl
---
"""


def test_subset_and_split_pick_their_files(tiny_model, tmp_path, hf_home):
    cached_repo(hf_home, "org/multi", {"README.md": README, "en/train.jsonl": pairs("en"),
                                       "en/test.jsonl": pairs("en-test", 2), "de/train.jsonl": pairs("de", 3)})
    root = data_dir(tmp_path, de={**PAIRS, "hf_hub_url": "org/multi", "subset": "de"},
                    en_test={**PAIRS, "hf_hub_url": "org/multi", "subset": "en", "split": "test"})
    got = prompts(tiny_model, root, "de")
    assert len(got) == 3 and all("de question" in text and "de good" in text for text in got)
    got = prompts(tiny_model, root, "en_test")
    assert len(got) == 2 and all("en-test question" in text for text in got)


def test_folder_and_revision(tiny_model, tmp_path, hf_home):
    cached_repo(hf_home, "org/versions", {"v1/part.jsonl": pairs("old", 2), "v2/part.jsonl": pairs("new", 5)})
    cached_repo(hf_home, "org/versions", {"v2/part.jsonl": pairs("tagged", 1)}, sha=SHA_V1, ref="v1.0")
    root = data_dir(tmp_path, v2={**PAIRS, "hf_hub_url": "org/versions", "folder": "v2"},
                    tagged={**PAIRS, "hf_hub_url": "org/versions", "folder": "v2", "revision": "v1.0"})
    assert [t.count("new question") for t in prompts(tiny_model, root, "v2")] == [1] * 5
    assert ["tagged good 0" in t for t in prompts(tiny_model, root, "tagged")] == [True]


def test_parquet_only_repo_gives_the_tokens_of_the_same_local_file(tiny_model, tmp_path, hf_home):
    rows = pairs("pq", 6)
    cached_repo(hf_home, "org/pq", {"data/train-00000-of-00001.parquet": rows})
    root = data_dir(tmp_path, hub={**PAIRS, "hf_hub_url": "org/pq"}, local={**PAIRS, "file_name": "local.json"})
    (root / "local.json").write_text(json.dumps(rows))
    assert prompts(tiny_model, root, "hub") == prompts(tiny_model, root, "local")


def test_remote_dataset_dir_reads_the_repos_dataset_info(tiny_model, tmp_path, hf_home):
    info = {"inrepo": {**PAIRS, "file_name": "pairs.jsonl"}}
    cached_repo(hf_home, "org/registry", {"dataset_info.json": json.dumps(info), "pairs.jsonl": pairs("remote", 3)})
    got = prompts(tiny_model, tmp_path, "inrepo", dataset_dir="REMOTE:org/registry")
    assert len(got) == 3 and "remote good 2" in got[2]


def test_trl_hub_id_without_dataset_info(tiny_model, tmp_path, hf_home):
    rows = [{"prompt": f"Q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(4)]
    cached_repo(hf_home, "trl-lib/tiny-prefs", {"data/train-00000-of-00001.parquet": rows})
    got = prompts(tiny_model, tmp_path, "trl-lib/tiny-prefs", dataset_dir=str(tmp_path / "no-such-dir"))
    assert [("Q1" in t, "yes 1" in t) for t in got][1] == (True, True) and len(got) == 4


def one_line_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    message = str(err.value)
    assert "\n" not in message
    return message


def config(tmp_path, root, dataset, **more) -> dict:
    return {"model_name_or_path": "m", "dataset": dataset, "dataset_dir": str(root),
            "output_dir": str(tmp_path / "out"), **more}


def test_uncached_hub_dataset_offline_is_one_line_with_the_fetch_command(tmp_path, hf_home):
    root = data_dir(tmp_path, ultra={**PAIRS, "hf_hub_url": "HuggingFaceH4/ultrafeedback_binarized"})
    message = one_line_error(config(tmp_path, root, "ultra"))
    assert "entry 'ultra'" in message and "'HuggingFaceH4/ultrafeedback_binarized'" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "`hf download --repo-type dataset HuggingFaceH4/ultrafeedback_binarized`" in message
    message = one_line_error(config(tmp_path, tmp_path, "trl-lib/ultrafeedback_binarized"))
    assert "`hf download --repo-type dataset trl-lib/ultrafeedback_binarized`" in message


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ({"ms_hub_url": "AI-ModelScope/x"}, ["entry 'd'", "ms_hub_url", "ModelScope", "hf_hub_url"]),
        ({"om_hub_url": "x/y"}, ["entry 'd'", "om_hub_url", "not supported"]),
        ({"script_url": "x"}, ["entry 'd'", "script_url", "not supported"]),
        ({"hf_hub_url": "org/multi", "subset": "fr"}, ["entry 'd'", "subset 'fr'", "['de', 'en']"]),
        ({"hf_hub_url": "org/multi", "subset": "de", "split": "test"}, ["split 'test'", "['train']"]),
        ({"hf_hub_url": "org/multi"}, ["entry 'd'", "subsets ['de', 'en']", "`subset`"]),
        ({"hf_hub_url": "org/multi", "folder": "fr"}, ["entry 'd'", "folder 'fr'"]),
        ({"hf_hub_url": "org/multi", "subset": 3}, ["entry 'd'", "subset must be a non-empty string"]),
    ],
)
def test_bad_hub_entries_are_one_line(tmp_path, hf_home, entry, fragments):
    cached_repo(hf_home, "org/multi", {"README.md": README, "en/train.jsonl": pairs("en"),
                                       "en/test.jsonl": pairs("t", 1), "de/train.jsonl": pairs("de")})
    root = data_dir(tmp_path, d={**PAIRS, **entry})
    message = one_line_error(config(tmp_path, root, "d"))
    for fragment in fragments:
        assert fragment in message


def test_hub_model_and_trl_hub_dataset_train_offline(tiny_model, tmp_path, hf_home):
    """A warm cache, HF_HUB_OFFLINE=1, no dataset_info.json: the first loss is log 2 (policy == reference)
    and the loss falls over 4 steps  of one repeated batch."""
    import math
    import shutil

    from trainer.workflow import run_training

    repo = hf_home / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    shutil.copytree(tiny_model, repo / "snapshots" / SHA)
    rows = [{"chosen": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"yes {i}"}],
             "rejected": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"no {i}"}]}
            for i in range(4)]
    cached_repo(hf_home, "org/convo-prefs", {"data/train-00000-of-00001.parquet": rows})
    cfg = load_config({
        "model_name_or_path": "org/tiny", "stage": "dpo", "do_train": True, "finetuning_type": "full", "dataset": "org/convo-prefs",
        "dataset_dir": str(tmp_path / "none"), "template": "default", "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant", "max_steps": 4, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "use_ray": False, "disable_tqdm": True, "seed": 0,
    })
    losses = [e["loss"] for e in run_training(cfg).log_history if "loss" in e]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_driver_keeps_remote_dataset_dir_and_makes_trl_paths_absolute(tmp_path, hf_home, monkeypatch):
    """What the driver ships to workers in other working dirs: REMOTE: stays a hub repo, a TRL file
    named relative to the working dir becomes absolute, registered names stay names."""
    from rayjobs.train import absolute_paths

    info = {"inrepo": {**PAIRS, "file_name": "pairs.jsonl"}}
    cached_repo(hf_home, "org/registry", {"dataset_info.json": json.dumps(info), "pairs.jsonl": pairs("r", 2)})
    cfg = load_config({"model_name_or_path": "m", "dataset": "inrepo", "dataset_dir": "REMOTE:org/registry",
                       "output_dir": str(tmp_path / "out")})
    assert absolute_paths(cfg)["dataset_dir"] == "REMOTE:org/registry" and "dataset" not in absolute_paths(cfg)
    (tmp_path / "mine.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config({"model_name_or_path": "m", "dataset": "mine.jsonl", "output_dir": "out"})
    assert absolute_paths(cfg, tmp_path)["dataset"] == str(tmp_path / "mine.jsonl")
