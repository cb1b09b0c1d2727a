"""The offline tiny model: deterministic bytes, byte-level round-trip, special tokens, chat template, shapes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.errors import DataError
from trainer.tiny_model import SPECIAL_TOKENS, build_tiny_model, main

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO.parent / "shared" / "data" / "dpo_en_demo.json"
LF_PEER = Path.home() / ".cache" / "prefsweep-lf-peer"
LF_PYTHON = LF_PEER / "venv" / "bin" / "python"

# Every token in the vocab must encode to this id (SPECIAL_TOKENS order is the id order).
EXPECTED_SPECIAL_IDS = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<|begin_of_text|>": 3,
    "<|start_header_id|>": 4,
    "<|end_header_id|>": 5,
    "<|eot_id|>": 6,
    "<|eom_id|>": 7,
}

# What LLaMA-Factory 0.9.5's Template.fix_special_tokens does per template (data/template.py):
# (token it sets as eos when replace_eos, stop words it registers as extra special tokens).
LF_TEMPLATE_TOKENS = {
    "default": (None, []),
    "empty": (None, []),
    "chatml": ("<|im_end|>", ["<|im_start|>"]),
    "qwen": ("<|im_end|>", []),
    "llama3": ("<|eot_id|>", ["<|eom_id|>"]),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """The demo sharegpt ranking file when the checkout has it, else a small jsonl with mixed scripts."""
    if DEMO_DATA.exists():
        return DEMO_DATA
    path = tmp_path_factory.mktemp("data") / "mini.jsonl"
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}: what is {i} plus {i}?"}],
         "chosen": {"from": "gpt", "value": f"The answer is {2 * i}. Träume, 日本語, 🙂."},
         "rejected": {"from": "gpt", "value": f"I think it is {i + 1}, but I am not sure."}}
        for i in range(200)
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, data_file) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), [data_file], vocab_size=1024, seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def test_same_seed_and_data_give_identical_bytes(tmp_path, data_file, tiny_dir):
    again = build_tiny_model(tmp_path / "again", [data_file], vocab_size=1024, seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(again / name) == _sha256(tiny_dir / name), name


def test_different_seed_changes_weights_not_tokenizer(tmp_path, data_file, tiny_dir):
    other = build_tiny_model(tmp_path / "seed1", [data_file], vocab_size=1024, seed=1)
    assert _sha256(other / "tokenizer.json") == _sha256(tiny_dir / "tokenizer.json")
    assert _sha256(other / "model.safetensors") != _sha256(tiny_dir / "model.safetensors")
    with safe_open(tiny_dir / "model.safetensors", "pt") as a, safe_open(other / "model.safetensors", "pt") as b:
        name = "model.embed_tokens.weight"
        assert not torch.equal(a.get_tensor(name), b.get_tensor(name))


def test_build_leaves_global_rng_alone(tmp_path, data_file):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", [data_file], vocab_size=300, seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, wörld! 🤖🧪 日本語のテキスト 中文 한국어",
        "  leading spaces,\ttabs\nnew lines\r\n and trailing  ",
        "e\u0301 (combining accent) vs \u00e9, zero\u200bwidth, ﷽, 👩‍👩‍👧 (ZWJ family)",
        "special text inline: <|im_start|>user\nhi<|im_end|>\n",
        "",
    ],
)
def test_any_text_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids_and_vocab_matches_model(tokenizer, model):
    assert set(SPECIAL_TOKENS) == set(EXPECTED_SPECIAL_IDS)
    for token, token_id in EXPECTED_SPECIAL_IDS.items():
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|begin_of_text|>", "<|im_end|>", "<|endoftext|>",
    )
    config = model.config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (3, 2, 0)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (3, 2, 0)
    assert len(tokenizer) == config.vocab_size == 1024
    assert model.get_input_embeddings().weight.shape == (1024, 64)
    assert model.get_output_embeddings().weight.shape == (1024, 64)
    # Encoding adds nothing by itself: templates decide where bos/eos go.
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
    assert prompt == expected[: expected.index("4<|im_end|>")]
    # No system message: nothing is inserted for it.
    assert tokenizer.apply_chat_template(messages[1:2], tokenize=False) == "<|im_start|>user\nHi!<|im_end|>\n"


def test_forward_gives_logits_over_the_whole_vocab(model):
    input_ids = torch.tensor([[3, 1, 200, 300, 2, 0, 0], [3, 1, 17, 18, 19, 20, 2]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=(input_ids != 0).long()).logits
    assert logits.shape == (2, 7, 1024)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_weights_are_untied_float32_safetensors(tiny_dir, model):
    assert not (tiny_dir / "pytorch_model.bin").exists()
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= keys
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
        assert not torch.equal(f.get_tensor("model.embed_tokens.weight"), f.get_tensor("lm_head.weight"))
    assert model.config.tie_word_embeddings is False
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2


@pytest.mark.parametrize("template", sorted(LF_TEMPLATE_TOKENS))
def test_lf_templates_add_no_tokens(tiny_dir, template):
    """Replays LLaMA-Factory's fix_special_tokens edits; none may grow the vocab past the embedding."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    size = len(tok)
    eos, stop_words = LF_TEMPLATE_TOKENS[template]
    if eos is not None:
        assert tok.add_special_tokens({"eos_token": eos}) == 0
    if stop_words:
        assert tok.add_special_tokens({"additional_special_tokens": stop_words}) == 0
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert len(tok) == size


@pytest.mark.skipif(not LF_PYTHON.exists(), reason="LLaMA-Factory peer venv not installed")
def test_real_lf_templates_leave_vocab_alone(tiny_dir):
    """Runs LLaMA-Factory's own get_template_and_fix_tokenizer on the saved tokenizer."""
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoTokenizer
        from llamafactory.data.template import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments
        out = {}
        for name in ["default", "empty", "chatml", "llama3", "qwen"]:
            tok = AutoTokenizer.from_pretrained(sys.argv[1])
            size, vocab = len(tok), tok.get_vocab()
            tpl = get_template_and_fix_tokenizer(tok, DataArguments(template=name))
            prompt, response = tpl.encode_oneturn(
                tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], system="S")
            out[name] = [size, len(tok), tok.get_vocab() == vocab, max(prompt + response), tok.eos_token]
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(LF_PEER / "stubs")}
    proc = subprocess.run(
        [str(LF_PYTHON), "-c", script, str(tiny_dir)], capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_eos = {"default": "<|im_end|>", "empty": "<|im_end|>", "chatml": "<|im_end|>",
                    "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}
    for name, (size, size_after, same_vocab, max_id, eos) in result.items():
        assert (size, size_after, same_vocab) == (1024, 1024, True), name
        assert max_id < 1024, name
        assert eos == expected_eos[name], name


@pytest.mark.skipif(not DEMO_DATA.exists(), reason="shared demo data not in this checkout")
def test_realistic_vocab_is_padded_to_the_requested_size(tmp_path):
    out = build_tiny_model(tmp_path / "v32k", [DEMO_DATA], vocab_size=32000, seed=0)
    tok = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert len(tok) == config["vocab_size"] == 32000
    # The demo file has fewer than 32000 BPE merges to offer: the tail is reserved filler.
    assert tok.convert_tokens_to_ids("<|reserved_0|>") > 30000
    assert tok.convert_ids_to_tokens(31999).startswith("<|reserved_")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_slice("lm_head.weight").get_shape() == [32000, 64]


def test_too_small_vocab_and_bad_json_are_rejected(tmp_path, data_file):
    with pytest.raises(ValueError, match="vocab_size=100"):
        build_tiny_model(tmp_path / "small", [data_file], vocab_size=100)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "ok"}\n{"a": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        build_tiny_model(tmp_path / "bad", [bad])


def test_cli_main_and_module_entry(tmp_path, data_file):
    assert main([str(tmp_path / "cli"), "--data", str(data_file), "--vocab-size", "300", "--seed", "3"]) == 0
    assert len(AutoTokenizer.from_pretrained(tmp_path / "cli")) == 300
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.tiny_model", str(tmp_path / "mod"), "--data", str(data_file),
         "--vocab-size", "300", "--seed", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _sha256(tmp_path / "mod" / "model.safetensors") == _sha256(tmp_path / "cli" / "model.safetensors")
