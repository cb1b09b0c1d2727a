"""Loading: file formats, alpaca / sharegpt mapping, max_samples, val_size, eval_dataset, stages, cache."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from tests.llamafactory_peer import LF_PYTHON, run_llamafactory
from trainer.config import DataArguments
from trainer.data import load_preference_data
from trainer.data.conversion import convert_record
from trainer.data.dataset_info import get_dataset_attr
from trainer.data.encoding import IGNORE_INDEX
from trainer.errors import ConfigError
from trainer.tiny_model import build_tiny_model

ALPACA_PAIRS = [
    {
        "instruction": f"Question {i}?",
        "input": "" if i % 2 else f"Context {i}.",
        "chosen": f"Good {i}.",
        "rejected": f"Bad {i}.",
    }
    for i in range(8)
]
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.json"
    corpus.write_text(json.dumps(ALPACA_PAIRS + ["System: Human: Assistant: user assistant system history"]))
    return build_tiny_model(root / "tiny", [corpus], vocab_size=1024, seed=0)


def write_dataset(root: Path, info: dict, files: dict[str, object]) -> Path:
    """Write `dataset_info.json` and data files (lists of rows -> JSON, bytes / str written as they are)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps(info))
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
    return root


def load(tok_dir, data_dir, *, stage="dpo", seed=0, do_train=True, **data_kwargs):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    data_kwargs.setdefault("template", "default")
    data_kwargs.setdefault("cutoff_len", 256)
    args = DataArguments(dataset_dir=str(data_dir), **data_kwargs)
    data = load_preference_data(
        args, tok, stage=stage, seed=seed, do_train=do_train, cache_dir=Path(data_dir) / "cache"
    )
    return data, tok


def texts(tok, dataset, key="chosen") -> list[str]:
    """Decoded (prompt, response) of each row of a tokenized pairwise set."""
    out = []
    for row in dataset:
        labels = row[f"{key}_labels"]
        n_prompt = labels.count(IGNORE_INDEX)
        out.append(
            (tok.decode(row[f"{key}_input_ids"][:n_prompt]), tok.decode(row[f"{key}_input_ids"][n_prompt:]))
        )
    return out


def test_alpaca_with_history_and_system(tok_dir, tmp_path):
    row = {
        "instruction": "And the capital?",
        "input": "Of France.",
        "out_good": "Paris.",
        "out_bad": "Rome.",
        "sys": "Be brief.",
        "hist": [["Hi", "Hello!"], ["Which country?", "France."]],
    }
    columns = {
        "prompt": "instruction",
        "query": "input",
        "chosen": "out_good",
        "rejected": "out_bad",
        "system": "sys",
        "history": "hist",
    }
    info = {"h": {"file_name": "h.json", "ranking": True, "columns": columns}}
    data_dir = write_dataset(tmp_path, info, {"h.json": [row]})
    assert convert_record(row, get_dataset_attr("h", data_dir)) == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Which country?"},
            {"role": "assistant", "content": "France."},
            {"role": "user", "content": "And the capital?\nOf France."},
        ],
        "system": "Be brief.",
        "chosen": "Paris.",
        "rejected": "Rome.",
    }
    data, tok = load(tok_dir, data_dir, dataset="h", template="default")
    ((prompt, chosen),) = texts(tok, data.train)
    assert prompt == (
        "System: Be brief.<|im_end|>\nHuman: Hi<|im_end|>\nAssistant:Hello!<|im_end|>\n"
        "Human: Which country?<|im_end|>\nAssistant:France.<|im_end|>\n"
        "Human: And the capital?\nOf France.<|im_end|>\nAssistant:"
    )
    assert chosen == "Paris.<|im_end|>\n"


def test_sharegpt_multi_turn_with_custom_tags(tok_dir, tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of France?"},
        ],
        "good": {"role": "assistant", "content": "Paris."},
        "bad": {"role": "assistant", "content": "Lyon."},
    }
    info = {
        "s": {
            "file_name": "s.jsonl",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "messages", "chosen": "good", "rejected": "bad"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    data_dir = write_dataset(tmp_path, info, {"s.jsonl": json.dumps(row) + "\n"})
    normalized = convert_record(row, get_dataset_attr("s", data_dir))
    assert normalized["system"] == "Be kind."
    assert [m["role"] for m in normalized["prompt"]] == ["user", "assistant", "user"]
    data, tok = load(tok_dir, data_dir, dataset="s", template="chatml")
    ((prompt, chosen),) = texts(tok, data.train)
    ((_, rejected),) = texts(tok, data.train, "rejected")
    assert prompt == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (chosen, rejected) == ("Paris.<|im_end|>\n", "Lyon.<|im_end|>\n")


def test_sharegpt_system_column_when_no_system_message(tmp_path):
    info = {
        "s": {
            "file_name": "s.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"chosen": "c", "rejected": "r", "system": "sys"},
        }
    }
    row = {
        "conversations": [{"from": "human", "value": "Hi"}],
        "c": {"from": "gpt", "value": "A"},
        "r": {"from": "gpt", "value": "B"},
        "sys": "S",
    }
    data_dir = write_dataset(tmp_path, info, {"s.json": [row]})
    assert convert_record(row, get_dataset_attr("s", data_dir))["system"] == "S"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv", "folder"])
def test_file_formats_give_the_same_tokens(tok_dir, tmp_path, fmt):
    reference = write_dataset(
        tmp_path / "ref",
        {"d": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS}},
        {"d.json": ALPACA_PAIRS},
    )
    expected, _ = load(tok_dir, reference, dataset="d")
    target = tmp_path / fmt
    target.mkdir()
    if fmt == "json":
        name = "d.json"
        (target / name).write_text(json.dumps(ALPACA_PAIRS))
    elif fmt == "jsonl":
        name = "d.jsonl"
        (target / name).write_text("\n".join(json.dumps(r) for r in ALPACA_PAIRS) + "\n\n")
    elif fmt == "parquet":
        name = "d.parquet"
        pq.write_table(pa.Table.from_pylist(ALPACA_PAIRS), target / name)
    elif fmt == "csv":
        name = "d.csv"
        datasets.Dataset.from_list(ALPACA_PAIRS).to_csv(
            target / name, index=False
        )  # empty input -> empty cell
    else:
        name = "parts"
        (target / name).mkdir()
        (target / name / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA_PAIRS[:5]))
        (target / name / "b.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA_PAIRS[5:]))
    (target / "dataset_info.json").write_text(
        json.dumps({"d": {"file_name": name, "ranking": True, "columns": ALPACA_COLUMNS}})
    )
    got, _ = load(tok_dir, target, dataset="d")
    assert got.train.to_list() == expected.train.to_list()
    assert got.fingerprint == expected.fingerprint


def test_max_samples_takes_the_first_rows_of_each_dataset(tok_dir, tmp_path):
    info = {
        "a": {"file_name": "a.json", "ranking": True, "columns": ALPACA_COLUMNS},
        "b": {"file_name": "b.json", "ranking": True, "columns": ALPACA_COLUMNS},
    }
    b_rows = [{**r, "chosen": r["chosen"].replace("Good", "Fine")} for r in ALPACA_PAIRS]
    data_dir = write_dataset(tmp_path, info, {"a.json": ALPACA_PAIRS, "b.json": b_rows})
    data, tok = load(tok_dir, data_dir, dataset="a,b", max_samples=3)
    assert [c for _, c in texts(tok, data.train)] == [
        f"{word} {i}.<|im_end|>\n" for word in ("Good", "Fine") for i in range(3)
    ]


@pytest.mark.parametrize(("val_size", "n_eval"), [(0.25, 2), (3, 3), (1, 1)])
def test_val_size_split_sizes_and_seed(tok_dir, tmp_path, val_size, n_eval):
    data_dir = write_dataset(
        tmp_path,
        {"d": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS}},
        {"d.json": ALPACA_PAIRS},
    )
    data, tok = load(tok_dir, data_dir, dataset="d", val_size=val_size, seed=7)
    assert (len(data.train), len(data.eval)) == (8 - n_eval, n_eval)
    # the same rows as LLaMA-Factory's split_dataset: datasets' train_test_split with the training seed
    split = datasets.Dataset.from_list(ALPACA_PAIRS).train_test_split(
        test_size=val_size if val_size < 1 else int(val_size), seed=7
    )
    assert [c for _, c in texts(tok, data.eval)] == [f"{r['chosen']}<|im_end|>\n" for r in split["test"]]
    assert [c for _, c in texts(tok, data.train)] == [f"{r['chosen']}<|im_end|>\n" for r in split["train"]]
    again, _ = load(tok_dir, data_dir, dataset="d", val_size=val_size, seed=7)
    assert again.fingerprint == data.fingerprint


def test_eval_dataset_and_do_train_false(tok_dir, tmp_path):
    info = {
        "train": {"file_name": "train.json", "ranking": True, "columns": ALPACA_COLUMNS},
        "dev": {"file_name": "dev.json", "ranking": True, "columns": ALPACA_COLUMNS},
    }
    data_dir = write_dataset(tmp_path, info, {"train.json": ALPACA_PAIRS[:6], "dev.json": ALPACA_PAIRS[6:]})
    data, tok = load(tok_dir, data_dir, dataset="train", eval_dataset="dev")
    assert (len(data.train), len(data.eval)) == (6, 2)
    assert [c for _, c in texts(tok, data.eval)] == ["Good 6.<|im_end|>\n", "Good 7.<|im_end|>\n"]
    eval_only, _ = load(tok_dir, data_dir, dataset="train", eval_dataset="dev", do_train=False)
    assert eval_only.train is None and eval_only.eval.to_list() == data.eval.to_list()
    with pytest.raises(ConfigError, match="val_size and eval_dataset are both set"):
        load(tok_dir, data_dir, dataset="train", eval_dataset="dev", val_size=0.1)
    with pytest.raises(ConfigError, match="dataset is required to train"):
        load(tok_dir, data_dir, eval_dataset="dev")


def test_stage_needs_matching_datasets(tok_dir, tmp_path):
    info = {
        "pairs": {"file_name": "p.json", "ranking": True, "columns": ALPACA_COLUMNS},
        "sft": {"file_name": "p.json"},
        "tagged": {"file_name": "k.json", "columns": {"kto_tag": "label"}},
    }
    data_dir = write_dataset(
        tmp_path,
        info,
        {"p.json": ALPACA_PAIRS, "k.json": [{"instruction": "q", "output": "a", "label": True}]},
    )
    with pytest.raises(
        ConfigError, match="dataset 'sft' has ranking: false, but stage dpo needs pairwise data"
    ):
        load(tok_dir, data_dir, dataset="pairs,sft")
    with pytest.raises(
        ConfigError, match="dataset 'pairs' has ranking: true, but stage kto needs unpaired data"
    ):
        load(tok_dir, data_dir, dataset="pairs", stage="kto")
    with pytest.raises(ConfigError, match="dataset 'sft' has no columns.kto_tag"):
        load(tok_dir, data_dir, dataset="sft", stage="kto")
    data, _ = load(tok_dir, data_dir, dataset="tagged", stage="kto")
    assert data.train["kto_tags"] == [True]


def test_kto_sharegpt_takes_the_last_assistant_turn(tok_dir, tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."},
        ],
        "ok": False,
    }
    info = {"k": {"file_name": "k.json", "formatting": "sharegpt", "columns": {"kto_tag": "ok"}}}
    data_dir = write_dataset(tmp_path, info, {"k.json": [row]})
    normalized = convert_record(row, get_dataset_attr("k", data_dir))
    assert normalized["response"] == "Paris." and normalized["kto_tag"] is False
    assert [m["content"] for m in normalized["prompt"]] == ["Hi", "Hello!", "Capital of France?"]


def test_tokenized_cache_is_reused_and_overwritten(tok_dir, tmp_path):
    data_dir = write_dataset(
        tmp_path,
        {"d": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS}},
        {"d.json": ALPACA_PAIRS},
    )
    first, _ = load(tok_dir, data_dir, dataset="d")
    files = [f["filename"] for f in first.train.cache_files]
    assert files and all(Path(f).parent == data_dir / "cache" for f in files)
    mtimes = [Path(f).stat().st_mtime_ns for f in files]
    second, _ = load(tok_dir, data_dir, dataset="d")
    assert [f["filename"] for f in second.train.cache_files] == files
    assert [Path(f).stat().st_mtime_ns for f in files] == mtimes  # read back, not rewritten
    third, _ = load(tok_dir, data_dir, dataset="d", overwrite_cache=True)
    assert third.train.to_list() == first.train.to_list()
    assert [Path(f).stat().st_mtime_ns for f in files] != mtimes
    # new data, new cache entry and fingerprint
    (data_dir / "d.json").write_text(json.dumps(ALPACA_PAIRS[:-1]))
    changed, _ = load(tok_dir, data_dir, dataset="d")
    assert [f["filename"] for f in changed.train.cache_files] != files
    assert changed.fingerprint != first.fingerprint and len(changed.train) == 7


def test_other_template_or_cutoff_is_another_cache_entry(tok_dir, tmp_path):
    data_dir = write_dataset(
        tmp_path,
        {"d": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS}},
        {"d.json": ALPACA_PAIRS},
    )
    default, _ = load(tok_dir, data_dir, dataset="d", template="default")
    chatml, _ = load(tok_dir, data_dir, dataset="d", template="chatml")
    short, _ = load(tok_dir, data_dir, dataset="d", template="default", cutoff_len=8)
    fingerprints = {default.fingerprint, chatml.fingerprint, short.fingerprint}
    assert len(fingerprints) == 3
    assert all(len(ids) <= 8 for ids in short.train["chosen_input_ids"])


def test_worker_processes_give_the_same_rows(tok_dir, tmp_path):
    data_dir = write_dataset(
        tmp_path,
        {"d": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS}},
        {"d.json": ALPACA_PAIRS},
    )
    single, _ = load(tok_dir, data_dir, dataset="d")
    multi, _ = load(tok_dir, data_dir, dataset="d", preprocessing_num_workers=2)
    assert multi.train.to_list() == single.train.to_list()


REPO = Path(__file__).resolve().parents[1]
LF_DEMO_SCRIPT = """
tok_dir, data_dir, template = sys.argv[1:4]
module, _ = lf_dataset(tok_dir, data_dir, template, "dpo_en_demo", "rm", cutoff_len=256, max_samples=64,
                       val_size=0.125)
print("@@LF@@" + json.dumps({"train": strip(module["train_dataset"]), "eval": strip(module["eval_dataset"])}))
"""


@pytest.mark.skipif(
    not LF_PYTHON.exists() or not (REPO / "data" / "dpo_en_demo.json").exists(),
    reason="LLaMA-Factory peer venv or demo data not present",
)
@pytest.mark.parametrize("template", ["default", "llama3"])
def test_demo_config_equals_live_llamafactory(tmp_path, template):
    """configs/tiny_dpo.yaml's data settings (max_samples 64, val_size 0.125, seed 42, cutoff 256, with
    truncation on the long demo rows): the same train and eval rows, in the same order, as LF's pipeline."""
    tok_dir = build_tiny_model(
        tmp_path / "tiny", [REPO / "data" / "dpo_en_demo.json"], vocab_size=1024, seed=0
    )
    lf = run_llamafactory(LF_DEMO_SCRIPT, tok_dir, REPO / "data", template, cache=tmp_path / "lf-cache")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    args = DataArguments(
        dataset="dpo_en_demo",
        dataset_dir=str(REPO / "data"),
        template=template,
        cutoff_len=256,
        max_samples=64,
        val_size=0.125,
    )
    data = load_preference_data(args, tok, stage="dpo", seed=42, cache_dir=tmp_path / "cache")
    assert (len(data.train), len(data.eval)) == (56, 8)
    assert any(len(ids) == 256 for ids in data.train["rejected_input_ids"])  # truncation happened
    assert data.train.to_list() == lf["train"]
    assert data.eval.to_list() == lf["eval"]


def test_num_samples_draws_a_seeded_permutation_then_repeats(tok_dir, tmp_path):
    info = {
        "few": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS, "num_samples": 3},
        "many": {"file_name": "d.json", "ranking": True, "columns": ALPACA_COLUMNS, "num_samples": 11},
    }
    data_dir = write_dataset(tmp_path, info, {"d.json": ALPACA_PAIRS})
    few, tok = load(tok_dir, data_dir, dataset="few", seed=3)
    import numpy as np

    expected = np.random.RandomState(3).permutation(8)[:3]  # LF: np.random after set_seed(seed)
    assert [c for _, c in texts(tok, few.train)] == [f"Good {i}.<|im_end|>\n" for i in expected]
    many, _ = load(tok_dir, data_dir, dataset="many", seed=3)
    assert len(many.train) == 11 and len({tuple(ids) for ids in many.train["chosen_input_ids"][:8]}) == 8
