"""Hostile data through `load_preference_data`: nothing crashes, every row is used or skipped with a reason.

The property test writes random, malformed rows (missing keys, wrong types, empty and huge strings, wrong
role order, invalid UTF-8, lone surrogates, NaN, nested junk, None, numbers for strings, lists for objects)
as `.json` / `.jsonl` files of an alpaca or sharegpt dataset, ranking (stage dpo) or kto_tag (stage kto),
and asserts the accounting identity

    rows used + sum(skipped.values()) == rows in the file

(used = train + eval rows, with or without a val_size split; a UTF-8 byte order mark sometimes leads the
file) with every skip reason one of `conversion.REASONS`. The only error allowed is a DataError saying the
data has no usable rows. The truncation tests follow LLaMA-Factory's `infer_seqlen`; the regression tests
at the end are the crashes this file found.
"""

from __future__ import annotations

import codecs
import copy
import json
import math
import tempfile
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from trainer.config import DataArguments
from trainer.data import load_preference_data
from trainer.data.conversion import EMPTY_AFTER_TRUNCATION, REASONS
from trainer.data.encoding import infer_seqlen
from trainer.errors import ConfigError, DataError

BAD_BYTES = "@@BADUTF8@@"  # replaced by bytes that are not UTF-8 when the file is written
HUGE = "lorem ipsum dolor sit amet " * 2000  # ~54k characters, thousands of tokens


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    """The tiny byte-level BPE (vocab 512); each use takes a deep copy (the loader edits it in place)."""
    datasets.disable_progress_bars()
    return AutoTokenizer.from_pretrained(tiny_model)


# ---------------------------------------------------------------- strategies
# A row starts well formed (so most datasets keep some rows) and then takes 0-3 mutations at random
# places: a value replaced by junk, a key or list item deleted, a role changed, the whole row replaced.

good_text = st.one_of(
    st.sampled_from(["Capital of France?", "Paris.", "Lyon.", "Say hi.", "Hi!", "{{content}}", "<|im_end|>"]),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip),
)
ROLES = ["human", "gpt", "system", "observation", "function_call", "user", "assistant", ""]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(math.nan),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
bad_values = st.one_of(
    st.sampled_from(["", " ", "\n\t ", "\x00", BAD_BYTES, "caf" + BAD_BYTES, HUGE, "\ud800", "a\udfffb"]),
    st.sampled_from(ROLES),
    st.sampled_from([None, math.nan, math.inf, 0, 1, -7, 2**64, 3.5, True, False, [], {}, [[]], {"": None}]),
    junk,
    st.integers(1, 60).map(lambda depth: _nest(depth)),
)


def _nest(depth: int) -> object:
    value: object = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"x": value}
    return value


def _message(from_: object, value: object) -> dict:
    return {"from": from_, "value": value}


@st.composite
def good_rows(draw, key: tuple[str, str]) -> dict:
    formatting, stage = key
    turns = draw(st.integers(0, 2))  # earlier exchanges before the judged prompt
    if formatting == "sharegpt":
        conversation = []
        if draw(st.booleans()):
            conversation.append(_message("system", draw(good_text)))
        for _ in range(turns):
            conversation += [_message("human", draw(good_text)), _message("gpt", draw(good_text))]
        conversation.append(_message("human", draw(good_text)))
        row: dict = {"conversations": conversation}
        if stage == "dpo":
            row["chosen"] = _message("gpt", draw(good_text))
            row["rejected"] = _message("gpt", draw(good_text))
        else:
            conversation.append(_message("gpt", draw(good_text)))
            row["label"] = draw(st.booleans())
        if draw(st.booleans()):
            row["system"] = draw(good_text)
        return row
    row = {"instruction": draw(good_text)}
    if draw(st.booleans()):
        row["input"] = draw(good_text)
    if turns:
        row["history"] = [[draw(good_text), draw(good_text)] for _ in range(turns)]
    if stage == "dpo":
        row["chosen"], row["rejected"] = draw(good_text), draw(good_text)
        if draw(st.booleans()):
            row["system"] = draw(good_text)
    else:
        row["output"], row["label"] = draw(good_text), draw(st.booleans())
    return row


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place inside `value` (dict keys and list indexes), outermost first."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found.append(prefix + (k,))
        found += _paths(v, prefix + (k,))
    return found


@st.composite
def mutated_rows(draw, key: tuple[str, str]) -> object:
    row = draw(good_rows(key))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(row)
        action = draw(st.sampled_from(["replace", "replace", "delete", "whole row"]))
        if action == "whole row" or not paths:
            row = draw(junk)
            continue
        *parent_path, last = draw(st.sampled_from(paths))
        parent = row
        for step in parent_path:
            parent = parent[step]
        if action == "delete":
            del parent[last]
        else:
            parent[last] = draw(bad_values)
    return row


INFO = {
    ("sharegpt", "dpo"): {
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    },
    ("alpaca", "dpo"): {
        "ranking": True,
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "chosen": "chosen",
            "rejected": "rejected",
            "history": "history",
            "system": "system",
        },
    },
    ("sharegpt", "kto"): {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "kto_tag": "label", "system": "system"},
    },
    ("alpaca", "kto"): {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "history": "history",
            "kto_tag": "label",
        }
    },
}
# a raw JSON Lines line: a serialized row, or bytes that are not JSON or not UTF-8 (never blank, no newline)
raw_lines = st.sampled_from(
    [b'{"conversations": [', b"\xff\xfe\xfd", b'{"instruction": "caf\xe9"}', b"nan", b"[[[[", b"}{", b"\x00"]
)


def _encode_row(row: object) -> bytes:
    """JSON of `row` (NaN and lone surrogates escaped as JSON allows), with BAD_BYTES made invalid UTF-8."""
    return json.dumps(row).encode("ascii").replace(BAD_BYTES.encode(), b"caf\xe9\xff")


def write_dataset(root: Path, key: tuple[str, str], rows: list, file_type: str, bom: bool = False) -> int:
    """Write `rows` (objects, or raw bytes lines for .jsonl) and a dataset_info.json; return the row count.

    `bom`: start the file with a UTF-8 byte order mark, as some Windows editors save it."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"data.{file_type}"
    if file_type == "jsonl":
        lines = [row if isinstance(row, bytes) else _encode_row(row) for row in rows]
        content = b"\n".join(lines) + b"\n"
    else:
        content = b"[" + b",\n".join(_encode_row(row) for row in rows if not isinstance(row, bytes)) + b"]"
        rows = [row for row in rows if not isinstance(row, bytes)]
    (root / name).write_bytes((codecs.BOM_UTF8 if bom else b"") + content)
    (root / "dataset_info.json").write_text(json.dumps({"d": {"file_name": name, **INFO[key]}}))
    return len(rows)


def load(tokenizer, data_dir: Path, *, stage: str, template: str | None, cutoff_len: int, **kwargs):
    args = DataArguments(
        dataset="d", dataset_dir=str(data_dir), template=template, cutoff_len=cutoff_len, **kwargs
    )
    return load_preference_data(
        args, copy.deepcopy(tokenizer), stage=stage, seed=0, cache_dir=data_dir / "cache"
    )


def check_accounting(tokenizer, data_dir: Path, n_rows: int, **kwargs) -> None:
    """used (train + eval) + skipped == rows in the file, or a DataError that says nothing is usable."""
    try:
        data = load(tokenizer, data_dir, **kwargs)
    except DataError as err:
        message = str(err)
        assert "no usable" in message, message
        if "no usable rows" in message:  # the dataset itself: every row skipped, counted against the file
            assert f"of {n_rows} skipped" in message, (message, n_rows)
        event("no usable rows")
        return
    used = len(data.train) + (len(data.eval) if data.eval is not None else 0)
    event(f"{used} used")
    for reason in data.skipped:
        event(f"skipped: {reason}")
    assert set(data.skipped) <= set(REASONS), data.skipped
    assert all(count > 0 for count in data.skipped.values()), data.skipped
    assert used + sum(data.skipped.values()) == n_rows, (used, data.skipped, n_rows)


# ---------------------------------------------------------------- property test


@st.composite
def datasets_(draw):
    key = draw(st.sampled_from(sorted(INFO)))
    file_type = draw(st.sampled_from(["json", "jsonl"]))
    row = st.one_of(good_rows(key), good_rows(key), mutated_rows(key), mutated_rows(key), raw_lines)
    rows = draw(st.lists(row, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=8))
    options = {
        "template": draw(st.sampled_from(["default", "chatml", "empty", "llama3", None])),
        "cutoff_len": draw(st.sampled_from([2, 12, 64, 64, 1024])),
        "val_size": draw(st.sampled_from([0.0, 0.25])),
    }
    return key, file_type, rows, draw(st.booleans()), options


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(datasets_())
def test_malformed_rows_are_used_or_skipped_with_a_reason(tokenizer, case):
    key, file_type, rows, bom, options = case
    with tempfile.TemporaryDirectory() as tmp:
        n_rows = write_dataset(Path(tmp), key, rows, file_type, bom=bom)
        if n_rows < 4:  # a val_size split of >= 4 rows leaves rows (good or bad) on both sides
            options["val_size"] = 0.0
        check_accounting(tokenizer, Path(tmp), n_rows, stage=key[1], **options)


# ---------------------------------------------------------------- truncation, end to end

GOOD = {
    "conversations": [_message("human", "Capital of France?")],
    "chosen": _message("gpt", "Paris."),
    "rejected": _message("gpt", "Lyon is not it."),
}
SHAREGPT = ("sharegpt", "dpo")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_prompt_longer_than_cutoff_is_cut_and_the_response_kept(tokenizer, tmp_path):
    """`empty` template (no eos, no role text): prompt ids = ids(prompt), response ids = ids(response).
    A short response (2 * len < cutoff) is kept whole by infer_seqlen; the prompt keeps its first
    cutoff - len(longer response) ids (LLaMA-Factory's prompt_ids[:source_len]); the example is used."""
    prompt = "Capital of France? " * 40
    row = {**GOOD, "conversations": [_message("human", prompt)]}
    write_dataset(tmp_path, SHAREGPT, [row], "json")
    data = load(tokenizer, tmp_path, stage="dpo", template="empty", cutoff_len=32)
    prompt_ids, chosen_ids, rejected_ids = (_ids(tokenizer, t) for t in (prompt, "Paris.", "Lyon is not it."))
    assert len(prompt_ids) > 32
    source_len, target_len = infer_seqlen(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)), 32)
    assert target_len == len(rejected_ids) and source_len == 32 - target_len
    example = data.train[0]
    assert example["chosen_input_ids"] == prompt_ids[:source_len] + chosen_ids
    assert example["rejected_input_ids"] == prompt_ids[:source_len] + rejected_ids
    assert example["chosen_labels"] == [-100] * source_len + chosen_ids
    assert data.skipped == {}


def test_no_response_token_left_after_truncation_is_skipped_with_its_reason(tokenizer, tmp_path):
    """A long prompt and a long response both over cutoff/2: the response gets
    int(cutoff * target / (source + target)) tokens. `default` template, tiny tokenizer: GOOD is 21 prompt
    and 9 response ids (cutoff 12 keeps 9 + 3); the long prompt is 412 ids: int(12 * 9 / 421) = 0."""
    long_prompt = {**GOOD, "conversations": [_message("human", "Capital of France? " * 40)]}
    write_dataset(tmp_path, SHAREGPT, [GOOD, long_prompt, GOOD], "json")
    data = load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=12)
    assert data.skipped == {EMPTY_AFTER_TRUNCATION: 1}
    assert EMPTY_AFTER_TRUNCATION == "empty response after truncation"
    assert len(data.train) == 2
    assert all(len(ids) == 12 for ids in data.train["chosen_input_ids"])


def test_kto_response_cut_to_nothing_is_skipped_with_its_reason(tokenizer, tmp_path):
    rows = [
        {"instruction": "Say hi.", "output": "Hi!", "label": True},
        {"instruction": "Say hi. " * 100, "output": "Hello there, my good friend.", "label": False},
    ]
    write_dataset(tmp_path, ("alpaca", "kto"), rows, "jsonl")
    data = load(tokenizer, tmp_path, stage="kto", template="default", cutoff_len=12)
    assert data.skipped == {EMPTY_AFTER_TRUNCATION: 1} and len(data.train) == 1


def test_dataset_that_shrinks_to_zero_names_the_dataset_and_the_counts(tokenizer, tmp_path):
    long_prompt = {**GOOD, "conversations": [_message("human", "Capital of France? " * 40)]}
    rows = [long_prompt, long_prompt, {**GOOD, "chosen": None}]
    write_dataset(tmp_path, SHAREGPT, rows, "json")
    with pytest.raises(DataError) as err:
        load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=3)
    message = str(err.value)
    assert "d (data.json)" in message, message
    assert "3 rows, 1 bad (missing chosen: 1), 2 empty response after truncation at cutoff_len=3" in message
    assert "raise cutoff_len" in message


# ---------------------------------------------------------------- regressions for crashes found


def test_deeply_nested_json_line_is_an_invalid_row_not_a_recursion_error(tokenizer, tmp_path):
    """json.loads raises RecursionError (not JSONDecodeError) past ~1000 levels of nesting."""
    rows = [GOOD, b"[" * 100_000 + b"]" * 100_000, GOOD]
    n_rows = write_dataset(tmp_path, SHAREGPT, rows, "jsonl")
    data = load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=64)
    assert data.skipped == {"invalid JSON": 1} and len(data.train) == 2 == n_rows - 1


def test_deeply_nested_json_document_is_a_data_error_naming_the_file(tokenizer, tmp_path):
    write_dataset(tmp_path, SHAREGPT, [], "json")
    (tmp_path / "data.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DataError, match=r"data\.json: .*nest"):
        load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=64)


@pytest.mark.parametrize("file_type", ["json", "jsonl"])
def test_byte_order_mark_is_not_a_bad_row(tokenizer, tmp_path, file_type):
    """Files saved with a UTF-8 BOM (Windows editors) used to lose their first row (.jsonl: invalid JSON)
    or the whole file (.json: DataError); json.loads refuses the BOM."""
    write_dataset(tmp_path, SHAREGPT, [GOOD, GOOD], file_type, bom=True)
    data = load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=64)
    assert data.skipped == {} and len(data.train) == 2


def test_bad_num_samples_is_a_config_error_not_a_type_error(tokenizer, tmp_path):
    """`num_samples: "ten"` in dataset_info.json used to reach numpy's slicing (TypeError)."""
    write_dataset(tmp_path, SHAREGPT, [GOOD], "json")
    entry = {"file_name": "data.json", **INFO[SHAREGPT], "num_samples": "ten"}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(ConfigError, match=r"dataset_info.json entry 'd': num_samples must be an integer >= 1"):
        load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=64)


@pytest.mark.parametrize("document", ["42", '"rows"', "null", '{"a": 1}', '{"a": [1], "b": [1, 2]}'])
def test_json_document_that_is_not_a_list_of_rows_is_a_data_error_naming_the_file(tokenizer, tmp_path, document):
    write_dataset(tmp_path, SHAREGPT, [], "json")
    (tmp_path / "data.json").write_text(document)
    with pytest.raises(DataError, match=r"data\.json: "):
        load(tokenizer, tmp_path, stage="dpo", template="default", cutoff_len=64)
