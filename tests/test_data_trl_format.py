"""TRL-format datasets without a dataset_info.json: each format gives the tokens of the same data written in
LLaMA-Factory's sharegpt form; ambiguous or unknown columns, wrong stages and bad rows are named."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from trainer.config import DataArguments, load_config
from trainer.data import load_preference_data
from trainer.data.conversion import MISSING_PROMPT, WRONG_TYPE
from trainer.errors import ConfigError

PROMPTS = [f"Question {i}?" for i in range(6)]
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def load(tokenizer_dir: Path, data_dir: Path, dataset: str, *, stage: str = "dpo"):
    args = DataArguments(dataset=dataset, dataset_dir=str(data_dir), template="default", cutoff_len=256)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return load_preference_data(args, tokenizer, stage=stage, seed=0, cache_dir=data_dir / "cache")


def sharegpt_reference(tmp_path: Path, rows: list[dict], *, ranking: bool = True) -> Path:
    """The same data as LLaMA-Factory sharegpt rows registered in a dataset_info.json."""
    root = tmp_path / "reference"
    root.mkdir()
    (root / "ref.json").write_text(json.dumps(rows))
    columns = {"messages": "messages", **({"chosen": "chosen", "rejected": "rejected"} if ranking else
                                          {"kto_tag": "label"})}
    info = {"ref": {"file_name": "ref.json", "formatting": "sharegpt", "ranking": ranking,
                    "columns": columns, "tags": SHAREGPT_TAGS}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def write_trl(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    """TRL rows in a folder without a dataset_info.json (parquet for .parquet, else JSON Lines)."""
    root = tmp_path / "trl"
    root.mkdir(exist_ok=True)
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), root / name)
    else:
        (root / name).write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_standard_preference_rows_tokenize_as_sharegpt(tiny_model, tmp_path):
    """prompt/chosen/rejected strings: the prompt is one user turn."""
    trl = [{"prompt": p, "chosen": f"Good {i}.", "rejected": f"Bad {i}.", "score": i} for i, p in enumerate(PROMPTS)]
    ref = [{"messages": [user(p)], "chosen": assistant(f"Good {i}."), "rejected": assistant(f"Bad {i}.")}
           for i, p in enumerate(PROMPTS)]
    root = write_trl(tmp_path, "prefs.parquet", trl)
    got = load(tiny_model, root, "prefs.parquet")
    expected = load(tiny_model, sharegpt_reference(tmp_path, ref), "ref")
    assert len(got.train) == len(PROMPTS)
    assert got.train.to_list() == expected.train.to_list()


def test_conversational_explicit_prompt_with_system_message(tiny_model, tmp_path):
    """A leading system message is the system prompt; chosen/rejected are one assistant message each."""
    convo = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello"), user("2+2?")]
    trl = [{"prompt": convo, "chosen": [assistant("4")], "rejected": [assistant("5")]}] * 3
    ref = [{"messages": convo, "chosen": assistant("4"), "rejected": assistant("5")}] * 3
    got = load(tiny_model, write_trl(tmp_path, "c.jsonl", trl), "c.jsonl")
    expected = load(tiny_model, sharegpt_reference(tmp_path, ref), "ref")
    assert got.train.to_list() == expected.train.to_list()


def test_conversational_implicit_prompt_is_the_shared_prefix(tiny_model, tmp_path):
    """Without a prompt column, the messages chosen and rejected share are the prompt (TRL's extract_prompt)."""
    trl = [{"chosen": [user(p), assistant("A"), user("More?"), assistant(f"Yes {i}")],
            "rejected": [user(p), assistant("A"), user("More?"), assistant(f"No {i}")]}
           for i, p in enumerate(PROMPTS)]
    ref = [{"messages": [user(p), assistant("A"), user("More?")], "chosen": assistant(f"Yes {i}"),
            "rejected": assistant(f"No {i}")} for i, p in enumerate(PROMPTS)]
    got = load(tiny_model, write_trl(tmp_path, "implicit.jsonl", trl), "implicit.jsonl")
    expected = load(tiny_model, sharegpt_reference(tmp_path, ref), "ref")
    assert got.train.to_list() == expected.train.to_list()


def test_unpaired_kto_rows_tokenize_as_sharegpt_kto(tiny_model, tmp_path):
    trl = [{"prompt": p, "completion": f"Answer {i}.", "label": i % 2 == 0} for i, p in enumerate(PROMPTS)]
    ref = [{"messages": [user(p), assistant(f"Answer {i}.")], "label": i % 2 == 0} for i, p in enumerate(PROMPTS)]
    got = load(tiny_model, write_trl(tmp_path, "kto.jsonl", trl), "kto.jsonl", stage="kto")
    expected = load(tiny_model, sharegpt_reference(tmp_path, ref, ranking=False), "ref", stage="kto")
    assert got.train["kto_tags"] == [True, False, True, False, True, False]
    assert got.train.to_list() == expected.train.to_list()


def test_bad_trl_rows_are_skipped_with_their_reasons(tiny_model, tmp_path):
    good = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
    rows = [
        good,
        {"chosen": "yes", "rejected": "no"},  # strings need an explicit prompt
        {"prompt": "Q?", "chosen": [assistant("a"), user("b"), assistant("c")], "rejected": "no"},  # multi-turn
        {"prompt": "Q?", "chosen": 5, "rejected": "no"},
        good,
    ]
    rows[1]["prompt"] = None
    data = load(tiny_model, write_trl(tmp_path, "bad.jsonl", rows), "bad.jsonl")
    assert len(data.train) == 2
    assert data.skipped == {MISSING_PROMPT: 1, WRONG_TYPE: 2}


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        (["prompt", "chosen", "rejected", "completion", "label"], ["fit both TRL formats", "'completion'"]),
        (["prompt", "completion"], ["no TRL format", "missing ['label']", "prompt, chosen, rejected"]),
        (["question", "answer"], ["['answer', 'question']", "expected preference: prompt, chosen, rejected"]),
    ],
)
def test_ambiguous_or_unknown_columns_list_found_and_expected(tmp_path, columns, fragments):
    root = write_trl(tmp_path, "x.jsonl", [dict.fromkeys(columns, "v")])
    with pytest.raises(ConfigError) as err:
        load_config({"model_name_or_path": "m", "dataset": "x.jsonl", "dataset_dir": str(root),
                     "output_dir": str(tmp_path / "out")})
    message = str(err.value)
    assert "\n" not in message and "dataset 'x.jsonl'" in message
    for fragment in fragments:
        assert fragment in message


def test_stage_must_match_the_detected_format(tiny_model, tmp_path):
    root = write_trl(tmp_path, "kto.jsonl", [{"prompt": "Q", "completion": "A", "label": True}])
    with pytest.raises(ConfigError, match="holds TRL unpaired KTO rows .* but stage dpo needs preference pairs"):
        load(tiny_model, root, "kto.jsonl", stage="dpo")


def test_config_takes_a_trl_path_relative_to_the_working_dir(tmp_path, monkeypatch):
    """No dataset_info.json anywhere: `dataset:` is the path a TRL user has."""
    root = write_trl(tmp_path, "prefs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    monkeypatch.chdir(root)
    cfg = load_config({"model_name_or_path": "m", "dataset": "prefs.jsonl", "output_dir": str(tmp_path / "o")})
    assert cfg.data.dataset == "prefs.jsonl" and cfg.data.dataset_dir == "data"  # data/ does not exist


def test_trl_kto_file_trains_without_dataset_info(tiny_model, tmp_path):
    """First KTO loss at policy == reference is 0.5 (docs/architecture.md), then it falls."""
    from trainer.workflow import run_training

    rows = [{"prompt": [user(p)], "completion": [assistant(f"Answer {i}.")], "label": i % 2 == 0}
            for i, p in enumerate(PROMPTS)]
    root = write_trl(tmp_path, "kto.jsonl", rows)
    cfg = load_config({
        "model_name_or_path": str(tiny_model), "stage": "kto", "do_train": True, "finetuning_type": "full",
        "dataset": str(root / "kto.jsonl"), "template": "default", "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 6, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant", "max_steps": 4, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "use_ray": False, "disable_tqdm": True, "seed": 0,
    })
    losses = [e["loss"] for e in run_training(cfg).log_history if "loss" in e]
    assert losses[0] == pytest.approx(0.5, abs=1e-4)
    assert len(losses) == 4 and losses[-1] < losses[0]
