"""Bad rows: each kind skipped with its reason, counted and reported by row; strict_data raises; none left -> error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trainer.config import DataArguments
from trainer.data import load_preference_data
from trainer.data.conversion import REASONS
from trainer.errors import DataError
from trainer.tiny_model import build_tiny_model


def turn(role: str, value) -> dict:
    return {"from": role, "value": value}


GOOD = {
    "conversations": [turn("human", "Capital of France?")],
    "chosen": turn("gpt", "Paris."),
    "rejected": turn("gpt", "Lyon."),
}
SHAREGPT_INFO = {
    "formatting": "sharegpt",
    "ranking": True,
    "columns": {"chosen": "chosen", "rejected": "rejected"},
}
KTO_INFO = {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}}
KTO_GOOD = {"instruction": "Say hi.", "output": "Hi!", "label": True}

# (row, reason) for sharegpt ranking rows, stage dpo
SHAREGPT_BAD = [
    ({"conversations": GOOD["conversations"], "rejected": GOOD["rejected"]}, "missing chosen"),
    ({**GOOD, "chosen": None}, "missing chosen"),
    ({k: v for k, v in GOOD.items() if k != "rejected"}, "missing rejected"),
    ({**GOOD, "chosen": turn("gpt", "")}, "empty response"),
    ({**GOOD, "rejected": turn("gpt", "  \n")}, "empty response"),
    (
        {**GOOD, "conversations": [turn("human", "a"), turn("human", "b"), turn("human", "c")]},
        "roles out of order",
    ),
    ({**GOOD, "conversations": [turn("human", "a"), turn("gpt", "b")]}, "roles out of order"),
    ({**GOOD, "conversations": [turn("gpt", "a")]}, "roles out of order"),
    ({**GOOD, "chosen": turn("human", "Paris.")}, "roles out of order"),
    (
        {**GOOD, "conversations": [turn("human", "a"), turn("function_call", "{}"), turn("human", "c")]},
        "unsupported role",
    ),
    ({**GOOD, "conversations": [turn("user", "a")]}, "unsupported role"),
    ({**GOOD, "conversations": "Capital of France?"}, "wrong type"),
    ({**GOOD, "chosen": "Paris."}, "wrong type"),  # sharegpt chosen must be a message object
    ({**GOOD, "conversations": [turn("human", 42)]}, "wrong type"),
    ({**GOOD, "conversations": [[["human", "hi"]]]}, "wrong type"),
    ({**GOOD, "chosen": turn("gpt", float("nan"))}, "NaN"),
    ({**GOOD, "conversations": []}, "missing prompt"),
    ({**GOOD, "chosen": turn("gpt", "Par\ud800is")}, "undecodable text"),
    (["not", "an", "object"], "wrong type"),
]
KTO_BAD = [
    ({**KTO_GOOD, "label": "yes"}, "non-boolean kto_tag"),
    ({**KTO_GOOD, "label": 1}, "non-boolean kto_tag"),
    ({k: v for k, v in KTO_GOOD.items() if k != "label"}, "non-boolean kto_tag"),
    ({k: v for k, v in KTO_GOOD.items() if k != "output"}, "missing response"),
    ({**KTO_GOOD, "output": ""}, "empty response"),
    ({**KTO_GOOD, "instruction": ["Say", "hi"]}, "wrong type"),
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.json"
    corpus.write_text(json.dumps([GOOD, KTO_GOOD]))
    return build_tiny_model(root / "tiny", [corpus], vocab_size=1024, seed=0)


def write(root: Path, entries: dict[str, tuple[dict, str, str | bytes]]) -> Path:
    """entries: dataset name -> (dataset_info entry without file_name, file name, file text or bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (entry, file_name, content) in entries.items():
        info[name] = {"file_name": file_name, **entry}
        if isinstance(content, bytes):
            (root / file_name).write_bytes(content)
        else:
            (root / file_name).write_text(content, encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def load(tok_dir, data_dir, **kwargs):
    stage = kwargs.pop("stage", "dpo")
    args = DataArguments(
        dataset_dir=str(data_dir), template="default", cutoff_len=kwargs.pop("cutoff_len", 128), **kwargs
    )
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return load_preference_data(args, tok, stage=stage, seed=0, cache_dir=Path(data_dir) / "cache")


@pytest.mark.parametrize(
    ("row", "reason"), SHAREGPT_BAD, ids=[f"{i}-{r}" for i, (_, r) in enumerate(SHAREGPT_BAD)]
)
def test_each_bad_sharegpt_row_is_skipped_with_its_reason(tok_dir, tmp_path, caplog, row, reason):
    rows = [GOOD, row, GOOD]
    data_dir = write(tmp_path, {"pairs": (SHAREGPT_INFO, "pairs.json", json.dumps(rows))})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = load(tok_dir, data_dir, dataset="pairs")
    assert data.skipped == {reason: 1}
    assert len(data.train) == 2
    assert f"pairs (pairs.json): skipped 1 of 3 rows ({reason}: row 1)" in caplog.messages


@pytest.mark.parametrize(("row", "reason"), KTO_BAD, ids=[f"{i}-{r}" for i, (_, r) in enumerate(KTO_BAD)])
def test_each_bad_kto_row_is_skipped_with_its_reason(tok_dir, tmp_path, row, reason):
    data_dir = write(tmp_path, {"kto": (KTO_INFO, "kto.json", json.dumps([row, KTO_GOOD]))})
    data = load(tok_dir, data_dir, dataset="kto", stage="kto")
    assert data.skipped == {reason: 1}
    assert len(data.train) == 1


def test_every_reason_is_one_of_the_documented_reasons():
    assert {reason for _, reason in SHAREGPT_BAD + KTO_BAD} <= set(REASONS)


def test_report_line_lists_reasons_with_their_rows(tok_dir, tmp_path, caplog):
    no_chosen = {k: v for k, v in GOOD.items() if k != "chosen"}
    empty = {**GOOD, "chosen": turn("gpt", "")}
    rows = [GOOD] * 4 + [no_chosen] + [GOOD] * 4 + [empty] + [GOOD] * 7 + [no_chosen] + [GOOD] * 282
    data_dir = write(tmp_path, {"dpo_en_demo": (SHAREGPT_INFO, "file.json", json.dumps(rows))})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = load(tok_dir, data_dir, dataset="dpo_en_demo")
    line = (
        "dpo_en_demo (file.json): skipped 3 of 300 rows (missing chosen: rows 4, 17; empty response: row 9)"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "trainer.data.sources"] == [line]
    assert data.skipped == {"missing chosen": 2, "empty response": 1}
    assert len(data.train) == 297


def test_report_shows_the_first_five_rows_of_a_reason(tok_dir, tmp_path, caplog):
    rows = [GOOD] + [{**GOOD, "chosen": None}] * 8
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", json.dumps(rows))})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        load(tok_dir, data_dir, dataset="d")
    assert (
        "d (d.json): skipped 8 of 9 rows (missing chosen: rows 1, 2, 3, 4, 5 and 3 more)" in caplog.messages
    )


def test_jsonl_lines_that_do_not_parse_or_decode(tok_dir, tmp_path):
    good = json.dumps(GOOD).encode()
    content = b"\n".join([good, b'{"conversations": [', good, b'{"conversations": "caf\xe9"}', good]) + b"\n"
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.jsonl", content)})
    data = load(tok_dir, data_dir, dataset="d")
    assert data.skipped == {"invalid JSON": 1, "undecodable text": 1}
    assert len(data.train) == 3


def test_invalid_utf8_inside_a_json_document_is_one_bad_row(tok_dir, tmp_path, caplog):
    bad = (
        json.dumps({**GOOD, "chosen": turn("gpt", "PLACEHOLDER")})
        .encode()
        .replace(b"PLACEHOLDER", b"Par\xffis")
    )
    content = b"[" + b",".join([json.dumps(GOOD).encode(), json.dumps(GOOD).encode(), bad]) + b"]"
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", content)})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = load(tok_dir, data_dir, dataset="d")
    assert data.skipped == {"undecodable text": 1}
    assert "d (d.json): skipped 1 of 3 rows (undecodable text: row 2)" in caplog.messages


def test_csv_empty_required_cell_is_missing(tok_dir, tmp_path):
    content = "instruction,chosen,rejected\nQ1,A1,B1\nQ2,,B2\nQ3,A3,B3\n"
    info = {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}
    data_dir = write(tmp_path, {"d": (info, "d.csv", content)})
    data = load(tok_dir, data_dir, dataset="d")
    assert data.skipped == {"missing chosen": 1} and len(data.train) == 2


def test_strict_data_raises_naming_file_row_and_reason(tok_dir, tmp_path):
    rows = [
        GOOD,
        GOOD,
        {**GOOD, "conversations": [turn("human", "a"), turn("human", "b"), turn("human", "c")]},
    ]
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", json.dumps(rows))})
    path = (data_dir / "d.json").resolve()
    with pytest.raises(DataError) as err:
        load(tok_dir, data_dir, dataset="d", strict_data=True)
    message = str(err.value)
    assert message.startswith(
        f"{path}: row 2: roles out of order: conversations[1] has role 'human' where 'gpt'"
    )
    assert "strict_data" in message


def test_zero_usable_rows_is_a_data_error(tok_dir, tmp_path):
    rows = [{**GOOD, "chosen": None}, {**GOOD, "rejected": turn("gpt", "")}]
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", json.dumps(rows))})
    with pytest.raises(
        DataError, match=r"d \(d.json\): no usable rows \(2 of 2 skipped: missing chosen: row 0; empty"
    ):
        load(tok_dir, data_dir, dataset="d")
    data_dir = write(tmp_path / "empty", {"d": (SHAREGPT_INFO, "d.json", "[]")})
    with pytest.raises(DataError, match=r"no usable rows \(0 of 0 skipped\)"):
        load(tok_dir, data_dir, dataset="d")


def test_skips_add_up_over_train_and_eval_datasets(tok_dir, tmp_path):
    bad = {**GOOD, "chosen": None}
    data_dir = write(
        tmp_path,
        {
            "a": (SHAREGPT_INFO, "a.json", json.dumps([GOOD, bad, GOOD])),
            "b": (SHAREGPT_INFO, "b.json", json.dumps([bad, GOOD, {**GOOD, "chosen": turn("gpt", "")}])),
        },
    )
    data = load(tok_dir, data_dir, dataset="a", eval_dataset="b")
    assert data.skipped == {"missing chosen": 2, "empty response": 1}
    assert (len(data.train), len(data.eval)) == (2, 1)


def test_response_empty_after_truncation_is_dropped_and_counted(tok_dir, tmp_path, caplog):
    """cutoff 8 with a ~40-token prompt and a 4-token response: int(8 * 4 / 44) = 0 response tokens left."""
    long_prompt = {**GOOD, "conversations": [turn("human", "Capital of France? " * 8)]}
    data_dir = write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", json.dumps([GOOD, long_prompt]))})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = load(tok_dir, data_dir, dataset="d", cutoff_len=8)
    assert data.skipped == {"empty response after truncation": 1}
    assert len(data.train) == 1 and len(data.train[0]["chosen_input_ids"]) <= 8
    assert any(
        "dropped 1 of 2 examples whose response is empty after truncation" in m for m in caplog.messages
    )
    with pytest.raises(DataError, match="the train set has no usable examples"):
        write(tmp_path, {"d": (SHAREGPT_INFO, "d.json", json.dumps([long_prompt]))})
        load(tok_dir, data_dir, dataset="d", cutoff_len=8)
