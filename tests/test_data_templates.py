"""Templates by hand: what the LF goldens look like decoded, the tokenizer edits, and the errors a user meets.

tests/test_template_goldens.py compares every template with LLaMA-Factory's tokens; here the tiny goldens are
decoded and read against the layout each template promises (so a wrong golden would show), and the rules
around templates are checked directly.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tests.template_cases import GOLDENS, build_tiny_tokenizer, write_data
from trainer.data.encoding import PairwiseEncoder
from trainer.data.templates import TEMPLATES, TokenizerChatTemplate, get_template_and_fix_tokenizer
from trainer.errors import ConfigError, DataError

TINY = json.loads((GOLDENS / "tiny.json").read_text(encoding="utf-8"))
Q = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"  # Qwen's first turn, row 1


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-templates")
    return build_tiny_tokenizer(root, write_data(root))


@pytest.fixture
def tok(tok_dir):
    """A fresh tiny tokenizer: the tests below edit it."""
    return AutoTokenizer.from_pretrained(tok_dir)


def decoded(tok, key: str, row: int) -> tuple[str, str, str]:
    return tuple(tok.decode(ids) for ids in TINY[key]["pairs"][row])


def test_golden_layouts_read_as_the_templates_say(tok):
    # row 0: system "Be brief." and a history turn; row 1: thoughts in history and chosen; row 4: alpaca
    prompt, chosen, _ = decoded(tok, "llama3", 0)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and chosen == "Paris.<|eot_id|>"
    assert decoded(tok, "default", 4) == (
        "Human: Name a primary color.\nJust one.<|im_end|>\nAssistant:", "Red.<|im_end|>\n", "Seven.<|im_end|>\n"
    )
    assert decoded(tok, "qwen", 4)[0].startswith(  # no system in the row: qwen's default system shows
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    # gemma3 has no system turn: the system text opens the first user message
    assert decoded(tok, "gemma3", 0)[0].startswith("<|begin_of_text|><start_of_turn>user\nBe brief.\n\nHi there")
    # llama2 opens every user turn with bos; phi_small's prefix is skipped by LF (a set naming no bos/eos)
    assert decoded(tok, "llama2", 4)[0] == "<|begin_of_text|>[INST] Name a primary color.\nJust one. [/INST]"
    assert decoded(tok, "phi_small", 4)[0].startswith("<|user|>\n")


def test_reasoning_templates_follow_enable_thinking(tok):
    """qwen3: history thoughts dropped; a response without a thought gets an empty one, trained on with
    enable_thinking true and part of the prompt with false (then thoughts in responses are dropped too);
    qwen3_nothink is a plain template: nothing added, nothing removed."""
    history = Q + "Hello!<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    empty = "<think>\n\n</think>\n\n"
    assert decoded(tok, "qwen3", 1) == (
        history, "<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>\n", empty + "Lyon.<|im_end|>\n"
    )
    assert decoded(tok, "qwen3/nothink", 1) == (history + empty, "Paris.<|im_end|>\n", "Lyon.<|im_end|>\n")
    prompt, chosen, rejected = decoded(tok, "qwen3_nothink", 1)
    assert prompt.startswith(Q + "<think>\nA greeting.\n</think>\n\nHello!") and rejected == "Lyon.<|im_end|>\n"
    assert decoded(tok, "glm4_7", 4)[1].startswith("</think>")  # GLM-4.7: an empty thought is the closing tag
    assert decoded(tok, "qwen3/preserve", 1)[0].startswith(Q + "<think>\nA greeting.\n</think>\n\nHello!")


def test_default_system_replaces_the_templates(tok):
    assert decoded(tok, "qwen/default_system", 4)[0].startswith("<|im_start|>system\nBe kind.<|im_end|>\n")
    assert decoded(tok, "qwen/default_system", 0) == decoded(tok, "qwen", 0)  # the row's own system wins


def test_missing_pad_becomes_eos_and_default_rewrites_the_chat_template(tok):
    tok.pad_token = None
    get_template_and_fix_tokenizer(tok, "default")
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=False
    )
    assert rendered == "Human: Hi<|im_end|>\nAssistant:Yo<|im_end|>\n"


def test_tiny_tokenizer_holds_every_templates_special_tokens(tok):
    """No template makes LF add a token to the tiny vocabulary (an embedding row the model lacks)."""
    size = len(tok)
    for name in TEMPLATES:
        fresh = AutoTokenizer.from_pretrained(tok.name_or_path) if len(tok) != size else tok
        get_template_and_fix_tokenizer(fresh, name)
        assert len(fresh) == size, name
    assert all(golden["tokenizer"][2] == size for golden in TINY.values())


def test_no_template_and_no_chat_template_is_a_config_error(tok):
    tok.chat_template = None
    with pytest.raises(ConfigError, match=r"`template` is unset and the tokenizer has no chat_template.*`template: empty`"):
        get_template_and_fix_tokenizer(tok, None)


def test_unknown_template_names_the_nearest(tok):
    with pytest.raises(ConfigError, match=r"template 'qwen3-nothink' is unknown; did you mean 'qwen3_nothink'\?"):
        get_template_and_fix_tokenizer(tok, "qwen3-nothink")


def test_chat_template_path_takes_response_after_generation_prompt(tok):
    template = get_template_and_fix_tokenizer(tok, None)
    assert isinstance(template, TokenizerChatTemplate)
    prompt, response = template.encode_oneturn(
        tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Paris."}], system="Be brief."
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
    with pytest.raises(DataError, match="pairs.json: row 3: .*not render the prompt as a prefix.*set `template`"):
        encoder.encode([{"role": "user", "content": "Hi"}], "A", "B", "", where="pairs.json: row 3")


def test_a_dataset_with_images_is_refused_in_one_line(tmp_path):
    from trainer.data.dataset_info import get_dataset_attr

    (tmp_path / "mm.json").write_text("[]", encoding="utf-8")
    info = {"mm": {"file_name": "mm.json", "formatting": "sharegpt", "ranking": True,
                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                               "images": "images"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mm.*multimodal data \(images\) is not supported; prefsweep trains on "
                                          r"text only") as err:
        get_dataset_attr("mm", str(tmp_path))
    assert "\n" not in str(err.value)


def test_generation_markers_set_the_response_start(tok):
    """With `{% generation %}` the marked span decides, even where the generation prompt would not fit."""
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}{% else %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>bot\n{% endif %}"
    )
    template = get_template_and_fix_tokenizer(tok, None)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                {"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Paris."}]
    prompt, response = template.encode_oneturn(tok, messages)
    assert tok.decode(prompt) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nCapital?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.decode(response) == "Paris.<|im_end|>\n"  # the marked span and what follows it


def test_a_full_vocabulary_still_holds_every_templates_tokens():
    """On the demo data BPE could fill all 512 ids; the template tokens are kept out of its budget."""
    from tests.template_cases import REPO
    from trainer.tiny_model import iter_texts, template_special_tokens, train_tokenizer

    tok = train_tokenizer(list(iter_texts([REPO / "data" / "dpo_en_demo.json"])), vocab_size=512, model_max_length=64)
    assert len(tok) == 512 and not any(t.startswith("<|reserved_") for t in tok.get_vocab())  # BPE filled it
    for token in template_special_tokens():
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert tok.encode("isopropyl sop", add_special_tokens=False)[-1] == tok.convert_tokens_to_ids("sop")
    assert tok.convert_tokens_to_ids("sop") not in tok.encode("isopropyl", add_special_tokens=False)
