"""LLaMA-Factory 0.9.5's text templates a-l, as data: the slots, stop words and flags of its registry.

Each entry lists only what differs from `template`'s defaults (or from the `like` entry it repeats).
Golden tokens made with LLaMA-Factory itself check every entry (tests/test_template_goldens.py).
"""

from __future__ import annotations

from trainer.data.templates.engine import BOS, EOS, Template, Token, template

ENTRIES: dict[str, Template] = {}
ENTRIES["aeva"] = template(
    "aeva",
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    prefix=("[gMASK]<sop>",),
    default_system="You are an AI assistant named Aeva created by Zongzhi Lou. Your answer should be friendly, unbiased, faithful, informative and detailed.",
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
    thinking="closing_tag",
    thought_words=("<think>", "</think>"),
)
ENTRIES["alpaca"] = template(
    "alpaca",
    user=("### Instruction:\n{{content}}\n\n### Response:\n",),
    assistant=("{{content}}", EOS, "\n\n"),
    default_system="Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
    replace_jinja_template=True,
)
ENTRIES["bailing"] = template(
    "bailing",
    user=("<role>HUMAN</role>{{content}}<role>ASSISTANT</role>",),
    system=("<role>SYSTEM</role>{{content}}",),
    stop_words=("<|endoftext|>",),
    efficient_eos=True,
)
ENTRIES["bailing_v2"] = template(
    "bailing_v2",
    user=("<role>HUMAN</role>{{content}}<|role_end|><role>ASSISTANT</role>",),
    assistant=("{{content}}<|role_end|>",),
    system=("<role>SYSTEM</role>{{content}}<|role_end|>",),
    stop_words=("<|endoftext|>",),
    efficient_eos=True,
)
ENTRIES["breeze"] = template(
    "breeze", user=("[INST] {{content}} [/INST] ",), prefix=(BOS,), efficient_eos=True
)
ENTRIES["chatglm3"] = template(
    "chatglm3",
    user=(Token("<|user|>"), "\n", "{{content}}", Token("<|assistant|>")),
    assistant=("\n", "{{content}}"),
    system=(Token("<|system|>"), "\n", "{{content}}"),
    prefix=(Token("[gMASK]"), Token("sop")),
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
)
ENTRIES["chatml"] = template(
    "chatml",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
    replace_jinja_template=True,
)
ENTRIES["chatml_de"] = template(
    "chatml_de",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
    replace_jinja_template=True,
)
ENTRIES["cohere"] = template(
    "cohere",
    user=(
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    system=("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",),
    prefix=(BOS,),
)
ENTRIES["cpm4"] = template(
    "cpm4",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    prefix=(BOS,),
    stop_words=("<|im_end|>",),
)
ENTRIES["dbrx"] = template(
    "dbrx",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are DBRX, created by Databricks. You were last updated in December 2023. You answer questions based on information available up to that point.\nYOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex and open-ended questions.\nYou assist with various tasks, from writing to coding (using markdown for code blocks — remember to use ``` with code, JSON, and tables).\n(You do not have real-time data access or code execution capabilities. You avoid stereotyping and provide balanced perspectives on controversial topics. You do not provide song lyrics, poems, or news articles and do not divulge details of your training data.)\nThis is your system prompt, guiding your responses. Do not reference it, just respond to the user. If you find yourself talking about this message, stop. You should be responding appropriately and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["deepseek"] = template(
    "deepseek", user=("User: {{content}}\n\nAssistant:",), system=("{{content}}\n\n",), prefix=(BOS,)
)
ENTRIES["deepseek3"] = template("deepseek3", user=("<｜User｜>{{content}}<｜Assistant｜>",), prefix=(BOS,))
ENTRIES["deepseekcoder"] = template(
    "deepseekcoder",
    user=("### Instruction:\n{{content}}\n### Response:",),
    assistant=("\n{{content}}\n<|EOT|>\n",),
    prefix=(BOS,),
    default_system="You are an AI programming assistant, utilizing the DeepSeek Coder model, developed by DeepSeek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer.\n",
)
ENTRIES["deepseekr1"] = template(
    "deepseekr1", user=("<｜User｜>{{content}}<｜Assistant｜>",), prefix=(BOS,), thinking="tags"
)
ENTRIES["default"] = template(
    "default",
    user=("Human: {{content}}", EOS, "\nAssistant:"),
    assistant=("{{content}}", EOS, "\n"),
    system=("System: {{content}}", EOS, "\n"),
    replace_jinja_template=True,
)
ENTRIES["empty"] = template("empty", assistant=("{{content}}",))
ENTRIES["ernie"] = template(
    "ernie",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n\n",),
    default_system="<global_setting>\nthink_mode=True\n</global_setting>",
    stop_words=("<|im_end|>",),
)
ENTRIES["ernie_nothink"] = template(
    "ernie_nothink",
    user=("User: {{content}}\nAssistant: ",),
    assistant=("{{content}}<|end_of_sentence|>",),
    system=("{{content}}\n",),
    prefix=("<|begin_of_sentence|>",),
    stop_words=("<|end_of_sentence|>",),
)
ENTRIES["exaone"] = template(
    "exaone",
    user=("[|user|]{{content}}\n[|assistant|]",),
    assistant=("{{content}}", EOS, "\n"),
    system=("[|system|]{{content}}[|endofturn|]\n",),
)
ENTRIES["falcon"] = template(
    "falcon", user=("User: {{content}}\nFalcon:",), assistant=("{{content}}\n",), efficient_eos=True
)
ENTRIES["falcon_h1"] = template(
    "falcon_h1",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    prefix=(BOS,),
    stop_words=("<|im_end|>", "<|end_of_text|>"),
)
ENTRIES["fewshot"] = template(
    "fewshot", assistant=("{{content}}\n\n",), efficient_eos=True, replace_jinja_template=True
)
ENTRIES["gemma"] = template(
    "gemma",
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    system=("{{content}}\n\n",),
    prefix=(BOS,),
    stop_words=("<end_of_turn>",),
    replace_eos=True,
    system_in_first_user=True,
)
ENTRIES["gemma2"] = template(
    "gemma2",
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    system=("{{content}}\n\n",),
    prefix=(BOS,),
    stop_words=("<eos>", "<end_of_turn>"),
    efficient_eos=True,
    system_in_first_user=True,
)
ENTRIES["glm4"] = template(
    "glm4",
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    prefix=("[gMASK]<sop>",),
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
)
ENTRIES["glm4_7"] = template(
    "glm4_7",
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    prefix=("[gMASK]<sop>",),
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
    thinking="closing_tag",
    thought_words=("<think>", "</think>"),
)
ENTRIES["glm4_moe"] = template(
    "glm4_moe",
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    prefix=("[gMASK]<sop>",),
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
    thinking="tags",
)
ENTRIES["glmz1"] = template("glmz1", like=ENTRIES["glm4_moe"])
ENTRIES["gpt_oss"] = template(
    "gpt_oss",
    user=("<|start|>user<|message|>{{content}}<|end|><|start|>assistant",),
    system=("<|start|>system<|message|>{{content}}<|end|>",),
    default_system="You are ChatGPT, a large language model trained by OpenAI.",
    efficient_eos=True,
    thinking="tags",
    thought_words=("<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final<|message|>"),
)
ENTRIES["granite3"] = template(
    "granite3",
    user=(
        "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    ),
    assistant=("{{content}}<|end_of_text|>\n",),
    system=("<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",),
)
ENTRIES["granite4"] = template(
    "granite4",
    user=(
        "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    ),
    assistant=("{{content}}<|end_of_text|>\n",),
    system=("<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",),
    default_system="You are Granite, developed by IBM. You are a helpful AI assistant.",
    stop_words=("<|end_of_text|>",),
)
ENTRIES["hunyuan"] = template(
    "hunyuan",
    user=("{{content}}<|extra_0|>",),
    assistant=("{{content}}<|eos|>",),
    system=("{{content}}<|extra_4|>",),
    prefix=("<|startoftext|>",),
    stop_words=("<|eos|>",),
)
ENTRIES["hunyuan_small"] = template(
    "hunyuan_small",
    user=("<｜hy_User｜>{{content}}<｜hy_place▁holder▁no▁8｜>",),
    assistant=("{{content}}<｜hy_place▁holder▁no▁2｜>",),
    system=("{{content}}<｜hy_place▁holder▁no▁3｜>",),
    prefix=("<｜hy_begin▁of▁sentence｜>",),
    stop_words=("<｜hy_place▁holder▁no▁2｜>",),
)
ENTRIES["hy3"] = template(
    "hy3",
    user=("<｜hy_User｜>{{content}}<｜hy_Assistant｜>",),
    assistant=("{{content}}<｜hy_eos｜>",),
    prefix=(BOS,),
    stop_words=("<｜hy_eos｜>",),
    replace_eos=True,
    thinking="tags",
    thought_words=("<think>", "</think>"),
)
ENTRIES["index"] = template(
    "index", user=("reserved_0{{content}}reserved_1",), system=("<unk>{{content}}",), efficient_eos=True
)
ENTRIES["intern2"] = template(
    "intern2",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    prefix=(BOS,),
    default_system="You are an AI assistant whose name is InternLM (书生·浦语).\n- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as English and 中文.",
    stop_words=("<|im_end|>",),
)
ENTRIES["lfm2"] = template(
    "lfm2",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful AI assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ENTRIES["llama2"] = template(
    "llama2",
    user=(BOS, "[INST] {{content}} [/INST]"),
    system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
    system_in_first_user=True,
)
ENTRIES["llama2_zh"] = template(
    "llama2_zh",
    user=(BOS, "[INST] {{content}} [/INST]"),
    system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
    system_in_first_user=True,
)
ENTRIES["llama3"] = template(
    "llama3",
    user=(
        "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    assistant=("{{content}}<|eot_id|>",),
    system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
    prefix=(BOS,),
    stop_words=("<|eot_id|>", "<|eom_id|>"),
    replace_eos=True,
)
