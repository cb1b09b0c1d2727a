"""The data, tokenizers and settings the template goldens are made from (tests/make_template_goldens.py)
and checked with (tests/test_template_goldens.py): both sides must build exactly the same inputs.

Rows: a sharegpt pair with a system prompt and a history turn; one whose history and chosen response carry
thought blocks (what reasoning templates rewrite) while the rejected one has none; two rows of the demo data
(`data/dpo_en_demo.json`: a short one, and one with a system prompt whose response CUTOFF_LEN truncates);
an alpaca pair without a system (default systems show); KTO rows, one with a thought block.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_TOKENIZERS = REPO.parent / "shared" / "tokenizers"
GOLDENS = Path(__file__).parent / "fixtures" / "template_goldens"
CUTOFF_LEN = 160
DEMO_ROWS = (134, 23)  # indices into data/dpo_en_demo.json

THOUGHT_HISTORY = "<think>\nA greeting.\n</think>\n\nHello!"
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
    },
    {
        "conversations": [
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": THOUGHT_HISTORY},
            {"from": "human", "value": "What is the capital of France?"},
        ],
        "chosen": {"from": "gpt", "value": "<think>\nFrance's capital.\n</think>\n\nParis."},
        "rejected": {"from": "gpt", "value": "Lyon."},
    },
]
PAIRS_ALPACA = [
    {"instruction": "Name a primary color.", "input": "Just one.", "chosen": "Red.", "rejected": "Seven."}
]
KTO_ALPACA = [
    {"instruction": "Say hello.", "output": "Hello there!", "label": True},
    {"instruction": "Name a color.", "output": "<think>\nAny color.\n</think>\n\nSeven.", "label": False},
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
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    },
    "demo": {
        "file_name": "demo.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "pairs_alpaca": {
        "file_name": "pairs_alpaca.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    },
    "kto": {"file_name": "kto.json", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}},
}
PAIRWISE_DATASETS = "pairs_sharegpt,demo,pairs_alpaca"
KTO_DATASET = "kto"

# Golden keys are `NAME` (LF's defaults) or `NAME/VARIANT` with these LF data options: `nothink` for every
# reasoning template, the others for the one template named.
VARIANTS = {
    "nothink": (None, {"enable_thinking": False}),
    "preserve": ("qwen3", {"preserve_thinking": True}),
    "default_system": ("qwen", {"default_system": "Be kind."}),
}

# Templates checked on each real tokenizer: those of its model family (name prefixes).
FAMILIES = {
    "qwen3": ("qwen", "chatml"),
    "llama3.1": ("llama", "mllama", "llava_next_llama3"),
    "gemma3": ("gemma", "paligemma"),
}


OTHER_GENERATION = ("gemma4", "gemma4n", "llama4")  # their models ship another vocabulary


def family_templates(tokenizer: str, names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(FAMILIES[tokenizer]) and name not in OTHER_GENERATION]


def write_data(root: Path) -> Path:
    """The data dir (dataset_info.json and the files it names) under `root`."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    demo_all = json.loads((REPO / "data" / "dpo_en_demo.json").read_text(encoding="utf-8"))
    for name, rows in (
        ("pairs_sharegpt.json", PAIRS_SHAREGPT),
        ("demo.json", [demo_all[i] for i in DEMO_ROWS]),
        ("pairs_alpaca.json", PAIRS_ALPACA),
        ("kto.json", KTO_ALPACA),
        ("corpus.json", CORPUS),
    ):
        (data / name).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps(DATASET_INFO, indent=1), encoding="utf-8")
    return data


def build_tiny_tokenizer(root: Path, data: Path) -> Path:
    """The tiny model's tokenizer trained on the data files (vocab 1024, seed 0), as the goldens used."""
    from trainer.tiny_model import build_tiny_model

    files = [data / n for n in ("corpus.json", "pairs_sharegpt.json", "demo.json", "pairs_alpaca.json", "kto.json")]
    return build_tiny_model(root / "tiny", files, vocab_size=1024, seed=0, hidden_size=8, intermediate_size=8,
                            num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)


_LOADED: dict[Path, tuple] = {}


def fresh_tokenizer(path: Path):
    """The tokenizer at `path` as loaded. Loading a real one takes seconds, so one copy per process is kept
    and put back (eos, pad, chat template, extra special tokens) on each call; one whose vocabulary a
    template grew is loaded anew."""
    from transformers import AutoTokenizer

    cached = _LOADED.get(path)
    if cached is not None and len(cached[0]) == cached[1][2]:
        tok, (eos, pad, _, chat_template, extra) = cached
        tok.eos_token, tok.pad_token, tok.chat_template = eos, pad, chat_template
        tok.extra_special_tokens = list(extra)
        return tok
    tok = AutoTokenizer.from_pretrained(path, padding_side="right")
    state = (tok.eos_token, tok.pad_token, len(tok), tok.chat_template, list(tok.extra_special_tokens))
    _LOADED[path] = (tok, state)
    return tok
