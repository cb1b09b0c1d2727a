"""Golden token ids and label masks per template, produced by LLaMA-Factory 0.9.5's own code.

How the goldens were made: `make_fixture(dir)` below writes the data and builds the tiny tokenizer
(`build_tiny_model(..., vocab_size=1024, seed=0)` on the data files); then LF's full data pipeline
(`get_template_and_fix_tokenizer` + `get_dataset`, i.e. converter, pairwise / feedback processor) ran on
that tokenizer and data with LF_SCRIPT (`tests.llamafactory_peer.run_llamafactory(LF_SCRIPT, TOKENIZER_DIR,
DATA_DIR, ...)`: the peer venv's python, PYTHONPATH=~/.cache/prefsweep-lf-peer/stubs)

and its output was written down compactly as (prompt ids, chosen ids, rejected ids): a row's
`chosen_input_ids` is prompt + chosen, its `chosen_labels` is [-100] * len(prompt) + chosen.
`test_goldens_equal_live_llamafactory` re-runs LF_SCRIPT where the peer venv is installed; elsewhere the
goldens stand alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.llamafactory_peer import LF_PYTHON, run_llamafactory
from trainer.config import DataArguments
from trainer.data import load_preference_data
from trainer.data.encoding import IGNORE_INDEX, PairwiseEncoder
from trainer.data.templates import TEMPLATES, TokenizerChatTemplate, get_template_and_fix_tokenizer
from trainer.errors import ConfigError, DataError
from trainer.tiny_model import build_tiny_model

# One sharegpt row with a system prompt and a history turn; one alpaca row with instruction + input and no
# system (so qwen's default system prompt shows).
PAIRS_SHAREGPT = [
    {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "What is the capital of France?"},
        ],
        "chosen": {"from": "gpt", "value": "Paris."},
        "rejected": {"from": "gpt", "value": "I do not know."},
    }
]
PAIRS_ALPACA = [
    {"instruction": "Name a primary color.", "input": "Just one.", "chosen": "Red.", "rejected": "Seven."}
]
KTO_ALPACA = [
    {"instruction": "Say hello.", "output": "Hello there!", "label": True},
    {"instruction": "Name a color.", "output": "Seven.", "label": False},
    {"instruction": "What is the capital of France?", "output": "Paris.", "label": True},
]
CORPUS = [
    "The capital of France is Paris. Red, yellow and blue are the primary colors.",
    "Human: Assistant: System: You are a helpful assistant. Be brief and answer the question.",
    "user assistant system Hello! How can I help you today? I do not know what that is.",
]
DATASET_INFO = {
    "pairs_sharegpt": {
        "file_name": "pairs_sharegpt.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {
            "messages": "conversations",
            "chosen": "chosen",
            "rejected": "rejected",
            "system": "system",
        },
    },
    "pairs_alpaca": {
        "file_name": "pairs_alpaca.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    },
    "kto": {
        "file_name": "kto.json",
        "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"},
    },
}
TEMPLATE_NAMES = [*TEMPLATES, None]  # None: the tokenizer's own chat_template


def make_fixture(root: Path) -> tuple[Path, Path]:
    """Write the data dir and build the tiny tokenizer from it; returns (tokenizer_dir, data_dir)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("pairs_sharegpt.json", PAIRS_SHAREGPT),
        ("pairs_alpaca.json", PAIRS_ALPACA),
        ("kto.json", KTO_ALPACA),
        ("corpus.json", CORPUS),
    ):
        (data / name).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps(DATASET_INFO, indent=1), encoding="utf-8")
    files = [data / n for n in ("corpus.json", "pairs_sharegpt.json", "pairs_alpaca.json", "kto.json")]
    return build_tiny_model(root / "tiny", files, vocab_size=1024, seed=0), data


LF_SCRIPT = """
tok_dir, data_dir = sys.argv[1:3]
out = {}
for name in ["default", "empty", "chatml", "llama3", "qwen", None]:
    for dataset, stage in (("pairs_sharegpt,pairs_alpaca", "rm"), ("kto", "kto")):
        module, tok = lf_dataset(tok_dir, data_dir, name, dataset, stage, cutoff_len=1024)
        out[f"{name}/{stage}"] = {"rows": strip(module["train_dataset"]), "eos": tok.eos_token,
                                  "pad": tok.pad_token, "chat_template": tok.chat_template}
print("@@LF@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return make_fixture(tmp_path_factory.mktemp("golden"))


@pytest.fixture
def tok(fixture_dirs):
    """A fresh copy of the tiny tokenizer: the tests below edit it."""
    return AutoTokenizer.from_pretrained(fixture_dirs[0])


def ours(tok_dir: Path, data_dir: Path, template: str | None, dataset: str, stage: str, cache: Path):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    args = DataArguments(dataset=dataset, dataset_dir=str(data_dir), template=template, cutoff_len=1024)
    data = load_preference_data(args, tok, stage=stage, seed=42, cache_dir=cache)
    return data.train.to_list(), tok


# fmt: off
# (prompt ids, chosen ids, rejected ids) per row: pairs_sharegpt row 0, then pairs_alpaca row 0.
# ChatML layout: `chatml`, and also the tiny tokenizer's own chat_template (template None).
CHATML_PAIRWISE = [
    ([1, 374, 206, 312, 344, 21, 2, 206, 1, 375, 206, 357, 341, 2, 206, 1, 72, 311, 206, 283, 8, 2, 206, 1, 375,
      206, 316, 281, 271, 309, 303, 308, 38, 2, 206, 1, 72, 311, 206],
     [304, 21, 2, 206], [48, 338, 353, 354, 21, 2, 206]),
    ([1, 375, 206, 347, 273, 355, 310, 21, 206, 401, 393, 21, 2, 206, 1, 72, 311, 206],
     [348, 21, 2, 206], [349, 21, 2, 206]),
]
GOLDEN_PAIRWISE: dict[str | None, list[tuple[list[int], list[int], list[int]]]] = {
    "default": [
        ([362, 33, 379, 344, 21, 2, 206, 359, 33, 228, 357, 341, 2, 206, 356, 33, 283, 8, 2, 206, 359, 33, 228,
          316, 281, 271, 309, 303, 308, 38, 2, 206, 356, 33],
         [304, 21, 2, 206], [48, 338, 353, 354, 21, 2, 206]),
        ([359, 33, 228, 347, 273, 355, 310, 21, 206, 401, 393, 21, 2, 206, 356, 33],
         [348, 21, 2, 206], [349, 21, 2, 206]),
    ],
    "empty": [
        ([312, 344, 21, 357, 341, 283, 8, 316, 281, 271, 309, 303, 308, 38], [304, 21], [48, 338, 353, 354, 21]),
        ([347, 273, 355, 310, 21, 206, 401, 393, 21], [348, 21], [349, 21]),
    ],
    "chatml": CHATML_PAIRWISE,
    "llama3": [
        ([3, 4, 374, 5, 206, 206, 312, 344, 21, 6, 4, 375, 5, 206, 206, 357, 341, 6, 4, 72, 311, 5, 206, 206, 283,
          8, 6, 4, 375, 5, 206, 206, 316, 281, 271, 309, 303, 308, 38, 6, 4, 72, 311, 5, 206, 206],
         [304, 21, 6], [48, 338, 353, 354, 21, 6]),
        ([3, 4, 375, 5, 206, 206, 347, 273, 355, 310, 21, 206, 401, 393, 21, 6, 4, 72, 311, 5, 206, 206],
         [348, 21, 6], [349, 21, 6]),
    ],
    "qwen": [
        CHATML_PAIRWISE[0],  # an explicit system replaces qwen's default
        ([1, 374, 206, 364, 352, 228, 56, 94, 321, 19, 270, 330, 274, 76, 75, 295, 96, 228, 40, 83, 80, 73, 72,
          73, 72, 228, 42, 267, 92, 75, 21, 384, 352, 273, 405, 342, 21, 2, 206, 1, 375, 206, 347, 273, 355, 310,
          21, 206, 401, 393, 21, 2, 206, 1, 72, 311, 206],
         [348, 21, 2, 206], [349, 21, 2, 206]),
    ],
    None: CHATML_PAIRWISE,
}
# kto under `default`: (prompt ids, response ids, kl response ids, kto_tag) per row.
GOLDEN_KTO_DEFAULT: list[tuple[list[int], list[int], list[int], bool]] = [
    ([359, 33, 228, 361, 396, 21, 2, 206, 356, 33], [283, 341, 8, 2, 206], [304, 21, 2, 206], True),
    ([359, 33, 228, 347, 273, 310, 21, 2, 206, 356, 33], [349, 21, 2, 206], [283, 341, 8, 2, 206], False),
    ([359, 33, 228, 316, 281, 271, 309, 303, 308, 38, 2, 206, 356, 33], [304, 21, 2, 206], [349, 21, 2, 206], True),
]
# fmt: on


def split_pairwise(row: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) of a tokenized pair, checking the label masks on the way."""
    n_prompt = row["chosen_labels"].count(IGNORE_INDEX)
    prompt = row["chosen_input_ids"][:n_prompt]
    assert row["rejected_input_ids"][:n_prompt] == prompt
    for key in ("chosen", "rejected"):
        ids, labels = row[f"{key}_input_ids"], row[f"{key}_labels"]
        assert labels == [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        assert row[f"{key}_attention_mask"] == [1] * len(ids)
    return prompt, row["chosen_input_ids"][n_prompt:], row["rejected_input_ids"][n_prompt:]


def split_kto(row: dict) -> tuple[list[int], list[int], list[int], bool]:
    n_prompt = row["labels"].count(IGNORE_INDEX)
    n_kl_prompt = row["kl_labels"].count(IGNORE_INDEX)
    assert row["labels"] == [IGNORE_INDEX] * n_prompt + row["input_ids"][n_prompt:]
    assert row["kl_labels"] == [IGNORE_INDEX] * n_kl_prompt + row["kl_input_ids"][n_kl_prompt:]
    assert row["kl_input_ids"][:n_kl_prompt] == row["input_ids"][:n_prompt]  # same prompt
    return (
        row["input_ids"][:n_prompt],
        row["input_ids"][n_prompt:],
        row["kl_input_ids"][n_kl_prompt:],
        row["kto_tags"],
    )


@pytest.mark.parametrize("template", TEMPLATE_NAMES, ids=lambda t: t or "tokenizer-chat-template")
def test_pairwise_ids_and_label_masks_equal_llamafactory(fixture_dirs, tmp_path, template):
    rows, _ = ours(*fixture_dirs, template, "pairs_sharegpt,pairs_alpaca", "dpo", tmp_path)
    assert [split_pairwise(row) for row in rows] == GOLDEN_PAIRWISE[template]


def test_kto_ids_and_kl_pairs_equal_llamafactory(fixture_dirs, tmp_path):
    rows, _ = ours(*fixture_dirs, "default", "kto", "kto", tmp_path)
    got = [split_kto(row) for row in rows]
    assert got == GOLDEN_KTO_DEFAULT
    # LF's KL pair: row i's prompt with row i-1's response (row 0 takes the batch's last response).
    responses = [response for _, response, _, _ in got]
    assert [kl for _, _, kl, _ in got] == responses[-1:] + responses[:-1]
    assert [tag for *_, tag in got] == [row["label"] for row in KTO_ALPACA]


def test_golden_layouts_read_as_the_templates_say(tok):
    """Decoding the goldens shows the layout each template promises (guards the goldens themselves)."""
    text = {name: [tok.decode(p + c) for p, c, _ in rows] for name, rows in GOLDEN_PAIRWISE.items()}
    assert (
        text["default"][1] == "Human: Name a primary color.\nJust one.<|im_end|>\nAssistant:Red.<|im_end|>\n"
    )
    assert text["default"][0].startswith(
        "System: Be brief.<|im_end|>\nHuman: Hi there<|im_end|>\nAssistant:Hello!"
    )
    assert text["empty"][1] == "Name a primary color.\nJust one.Red."  # no eos at all under `empty`
    assert text["chatml"][0].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there")
    assert text["chatml"][1].endswith("<|im_start|>assistant\nRed.<|im_end|>\n")
    assert text["llama3"][1] == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a primary color.\nJust one.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
    )
    assert text["qwen"][1].startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    assert text["qwen"][0] == text["chatml"][0]  # an explicit system replaces qwen's default
    assert GOLDEN_PAIRWISE[None] == GOLDEN_PAIRWISE["chatml"]  # the tiny tokenizer's chat_template is ChatML


@pytest.mark.parametrize(
    ("template", "eos", "pad"),
    [
        ("default", "<|im_end|>", "<|endoftext|>"),
        ("chatml", "<|im_end|>", "<|endoftext|>"),
        ("llama3", "<|eot_id|>", "<|endoftext|>"),
        ("qwen", "<|im_end|>", "<|endoftext|>"),
    ],
)
def test_templates_fix_the_tokenizer_as_llamafactory(tok, template, eos, pad):
    size = len(tok)
    get_template_and_fix_tokenizer(tok, template)
    assert (tok.eos_token, tok.pad_token, len(tok)) == (eos, pad, size)


def test_missing_pad_becomes_eos_and_default_rewrites_the_chat_template(tok):
    tok.pad_token = None
    get_template_and_fix_tokenizer(tok, "default")
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=False
    )
    assert rendered == "Human: Hi<|im_end|>\nAssistant:Yo<|im_end|>\n"


def test_no_template_and_no_chat_template_falls_back_to_empty(tok):
    tok.chat_template = None
    assert get_template_and_fix_tokenizer(tok, None) is TEMPLATES["empty"]


def test_unknown_template_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="template 'chatm1' is unknown"):
        get_template_and_fix_tokenizer(tok, "chatm1")


def test_chat_template_path_takes_response_after_generation_prompt(tok):
    template = get_template_and_fix_tokenizer(tok, None)
    assert isinstance(template, TokenizerChatTemplate)
    prompt, response = template.encode_oneturn(
        tok,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Paris."}],
        system="Be brief.",
    )
    assert tok.decode(prompt) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(response) == "Paris.<|im_end|>\n"


def test_chat_template_whose_prompt_is_not_a_prefix_is_a_data_error(tok):
    # the generation prompt says "bot" but finished turns say "assistant": the prompt is not a prefix
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>bot\n{% endif %}"
    )
    template = get_template_and_fix_tokenizer(tok, None)
    encoder = PairwiseEncoder(template=template, tokenizer=tok, cutoff_len=64)
    with pytest.raises(
        DataError, match="pairs.json: row 3: .*not render the prompt as a prefix.*set `template`"
    ):
        encoder.encode([{"role": "user", "content": "Hi"}], "A", "B", "", where="pairs.json: row 3")


@pytest.mark.skipif(not LF_PYTHON.exists(), reason="LLaMA-Factory peer venv not installed")
def test_goldens_equal_live_llamafactory(fixture_dirs, tmp_path):
    """Re-runs LF_SCRIPT (LLaMA-Factory's own pipeline) and compares it with the goldens and with us."""
    lf = run_llamafactory(LF_SCRIPT, *fixture_dirs, cache=tmp_path / "lf-cache")
    assert [split_kto(row) for row in lf["default/kto"]["rows"]] == GOLDEN_KTO_DEFAULT
    for template in TEMPLATE_NAMES:
        assert [split_pairwise(row) for row in lf[f"{template}/rm"]["rows"]] == GOLDEN_PAIRWISE[template]
        for dataset, stage, lf_stage in (("pairs_sharegpt,pairs_alpaca", "dpo", "rm"), ("kto", "kto", "kto")):
            rows, tok = ours(*fixture_dirs, template, dataset, stage, tmp_path / "ours")
            expected = lf[f"{template}/{lf_stage}"]
            assert rows == expected["rows"], (template, stage)
            assert (tok.eos_token, tok.pad_token) == (expected["eos"], expected["pad"]), (template, stage)
            assert tok.chat_template == expected["chat_template"], (template, stage)
