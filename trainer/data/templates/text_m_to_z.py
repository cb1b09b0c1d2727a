"""LLaMA-Factory 0.9.5's text templates m-z, as data: the slots, stop words and flags of its registry.

Each entry lists only what differs from `template`'s defaults (or from the `like` entry it repeats).
Golden tokens made with LLaMA-Factory itself check every entry (tests/test_template_goldens.py).
"""

from __future__ import annotations

from trainer.data.templates.engine import BOS, EOS, Template, Token, template

ENTRIES: dict[str, Template] = {}
ENTRIES["mimo"] = template(
    "mimo",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    thinking="tags",
)
ENTRIES["mimo_v2"] = template(
    "mimo_v2",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are MiMo, a helpful AI assistant engineered by Xiaomi.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    thinking="tags",
    thought_words=("<think>", "</think>"),
)
ENTRIES["minimax1"] = template(
    "minimax1",
    user=(
        "<beginning_of_sentence>user name=user\n{{content}}<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n",
    ),
    assistant=("{{content}}<end_of_sentence>\n",),
    system=("<beginning_of_sentence>system ai_setting=assistant\n{{content}}<end_of_sentence>\n",),
    default_system="You are a helpful assistant.",
    stop_words=("<end_of_sentence>",),
)
ENTRIES["minimax2"] = template(
    "minimax2",
    user=("]~b]user\n{{content}}[e~[\n]~b]ai\n",),
    assistant=("{{content}}[e~[\n",),
    system=("]~!b[]~b]system\n{{content}}[e~[\n",),
    default_system="You are a helpful assistant. Your name is MiniMax-M2.1 and is built by MiniMax.",
    stop_words=("[e~[",),
    thinking="tags",
)
ENTRIES["ministral"] = template(
    "ministral",
    user=("[INST]{{content}}[/INST]",),
    system=("{{content}}\n\n",),
    prefix=(BOS,),
    system_in_first_user=True,
)
ENTRIES["mistral"] = template(
    "mistral",
    user=("[INST] {{content}}[/INST]",),
    assistant=(" {{content}}", EOS),
    system=("{{content}}\n\n",),
    prefix=(BOS,),
    system_in_first_user=True,
)
ENTRIES["moonlight"] = template(
    "moonlight",
    user=("<|im_user|>user<|im_middle|>{{content}}<|im_end|><|im_assistant|>assistant<|im_middle|>",),
    assistant=("{{content}}<|im_end|>",),
    system=("<|im_system|>system<|im_middle|>{{content}}<|im_end|>",),
    default_system="You are a helpful assistant provided by Moonshot-AI.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["olmo"] = template("olmo", user=("<|user|>\n{{content}}<|assistant|>\n",), prefix=(EOS,))
ENTRIES["openchat"] = template(
    "openchat", user=("GPT4 Correct User: {{content}}", EOS, "GPT4 Correct Assistant:"), prefix=(BOS,)
)
ENTRIES["openchat-3.6"] = template(
    "openchat-3.6",
    user=(
        "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n",
    ),
    prefix=(BOS,),
    stop_words=("<|eot_id|>",),
)
ENTRIES["opencoder"] = template(
    "opencoder",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are OpenCoder, created by OpenCoder Team.",
    stop_words=("<|im_end|>",),
)
ENTRIES["phi"] = template(
    "phi",
    user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",),
    assistant=("{{content}}<|end|>\n",),
    system=("<|system|>\n{{content}}<|end|>\n",),
    stop_words=("<|end|>",),
    replace_eos=True,
)
ENTRIES["phi4"] = template(
    "phi4",
    user=("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",),
    assistant=("{{content}}<|im_end|>",),
    system=("<|im_start|>system<|im_sep|>{{content}}<|im_end|>",),
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["phi4_mini"] = template(
    "phi4_mini",
    user=("<|user|>{{content}}<|end|><|assistant|>",),
    assistant=("{{content}}<|end|>",),
    system=("<|system|>{{content}}<|end|>",),
    stop_words=("<|end|>",),
    replace_eos=True,
)
ENTRIES["phi_small"] = template(
    "phi_small",
    user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",),
    assistant=("{{content}}<|end|>\n",),
    system=("<|system|>\n{{content}}<|end|>\n",),
    # no prefix: LF's is the set {"<|endoftext|>"}, which its encoder skips (only bos/eos sets emit a token)
    stop_words=("<|end|>",),
    replace_eos=True,
)
ENTRIES["qwen"] = template(
    "qwen",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["qwen3"] = template(
    "qwen3",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    stop_words=("<|im_end|>",),
    replace_eos=True,
    thinking="tags",
)
ENTRIES["qwen3_nothink"] = template(
    "qwen3_nothink",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["sailor"] = template(
    "sailor",
    user=("<|im_start|>question\n{{content}}<|im_end|>\n<|im_start|>answer\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are an AI assistant named Sailor created by Sea AI Lab. Your answer should be friendly, unbiased, faithful, informative and detailed.",
    stop_words=("<|im_end|>",),
)
ENTRIES["seed_coder"] = template(
    "seed_coder",
    user=(BOS, "user\n{{content}}", EOS, BOS, "assistant\n"),
    system=(BOS, "system\n{{content}}", EOS),
    default_system="You are an AI programming assistant, utilizing the Seed-Coder model, developed by ByteDance Seed, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer.\n\n",
)
ENTRIES["seed_oss"] = template(
    "seed_oss",
    user=(BOS, "user\n{{content}}", EOS, BOS, "assistant\n"),
    system=(BOS, "system\n{{content}}", EOS),
    thinking="tags",
    thought_words=("<seed:think>", "</seed:think>"),
)
ENTRIES["smollm"] = template(
    "smollm",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    stop_words=("<|im_end|>",),
)
ENTRIES["smollm2"] = template(
    "smollm2",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
    stop_words=("<|im_end|>",),
)
ENTRIES["solar"] = template(
    "solar",
    user=("### User:\n{{content}}\n\n### Assistant:\n",),
    system=("### System:\n{{content}}\n\n",),
    efficient_eos=True,
)
ENTRIES["starchat"] = template(
    "starchat",
    user=("<|user|>\n{{content}}<|end|>\n<|assistant|>",),
    assistant=("{{content}}<|end|>\n",),
    system=("<|system|>\n{{content}}<|end|>\n",),
    stop_words=("<|end|>",),
)
ENTRIES["telechat2"] = template(
    "telechat2",
    user=("<_user>{{content}}<_bot>",),
    system=("<_system>{{content}}",),
    default_system="你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和中国电信人工智能研究院（TeleAI）研发的人工智能助手。",
)
ENTRIES["vicuna"] = template(
    "vicuna",
    user=("USER: {{content}} ASSISTANT:",),
    default_system="A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
    replace_jinja_template=True,
)
ENTRIES["xuanyuan"] = template(
    "xuanyuan",
    user=("Human: {{content}} Assistant:",),
    default_system="以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、不安全、有争议、政治敏感等相关的话题、问题和指示。\n",
)
ENTRIES["yi"] = template("yi", like=ENTRIES["smollm"])
ENTRIES["youtu"] = template(
    "youtu",
    user=("<|User|>{{content}}<|Assistant|>",),
    assistant=("{{content}}<|end_of_text|>",),
    prefix=(BOS,),
    stop_words=("<|end_of_text|>",),
    replace_eos=True,
    thinking="tags",
)
ENTRIES["yuan"] = template(
    "yuan", user=("{{content}}", Token("<sep>")), assistant=("{{content}}<eod>\n",), stop_words=("<eod>",)
)
ENTRIES["zephyr"] = template(
    "zephyr",
    user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
    system=("<|system|>\n{{content}}", EOS),
    default_system="You are Zephyr, a helpful assistant.",
)
