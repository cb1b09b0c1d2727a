"""LLaMA-Factory 0.9.5's templates of multimodal model families (text rows only), as data: the slots, stop words and flags of its registry.

Each entry lists only what differs from `template`'s defaults (or from the `like` entry it repeats).
Golden tokens made with LLaMA-Factory itself check every entry (tests/test_template_goldens.py).
"""

from __future__ import annotations

from trainer.data.templates import text_a_to_l, text_m_to_z
from trainer.data.templates.engine import BOS, Template, template

ENTRIES: dict[str, Template] = {}
ENTRIES["dots_ocr"] = template(
    "dots_ocr",
    user=("<|user|>{{content}}<|endofuser|><|assistant|>",),
    assistant=("{{content}}<|endofassistant|>",),
    system=("<|system|>{{content}}<|endofsystem|>\n",),
    stop_words=("<|endofassistant|>",),
    efficient_eos=True,
    multimodal=True,
)
ENTRIES["ernie_vl"] = template(
    "ernie_vl",
    user=("User: {{content}}",),
    assistant=("\nAssistant: {{content}}<|end_of_sentence|>",),
    system=("{{content}}\n",),
    stop_words=("<|end_of_sentence|>",),
    replace_eos=True,
    replace_jinja_template=True,
    thinking="tags",
    multimodal=True,
)
ENTRIES["gemma3"] = template("gemma3", like=text_a_to_l.ENTRIES["gemma"], multimodal=True)
ENTRIES["gemma3n"] = template("gemma3n", like=text_a_to_l.ENTRIES["gemma"], multimodal=True)
ENTRIES["gemma4"] = template(
    "gemma4",
    user=("<|turn>user\n{{content}}<turn|>\n<|turn>model\n",),
    assistant=("{{content}}<turn|>\n",),
    system=("<|turn>system\n<|think|>{{content}}<turn|>\n",),
    prefix=(BOS,),
    default_system="You are a helpful assistant.",
    stop_words=("<turn|>",),
    replace_eos=True,
    thinking="tags",
    thought_words=("<|channel>thought\n", "<channel|>"),
    multimodal=True,
)
ENTRIES["gemma4n"] = template("gemma4n", like=ENTRIES["gemma4"], multimodal=True)
ENTRIES["glm4_5v"] = template(
    "glm4_5v",
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    prefix=("[gMASK]<sop>",),
    stop_words=("<|user|>", "<|observation|>", "</answer>"),
    efficient_eos=True,
    thinking="tags",
    multimodal=True,
)
ENTRIES["glm4v"] = template("glm4v", like=ENTRIES["glm4_5v"], multimodal=True)
ENTRIES["glm_ocr"] = template("glm_ocr", like=text_a_to_l.ENTRIES["glm4"], multimodal=True)
ENTRIES["granite3_vision"] = template(
    "granite3_vision",
    user=("<|user|>\n{{content}}\n<|assistant|>\n",),
    system=("<|system|>\n{{content}}\n",),
    default_system="A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
    multimodal=True,
)
ENTRIES["intern_s1"] = template("intern_s1", like=text_a_to_l.ENTRIES["cpm4"], multimodal=True)
ENTRIES["intern_vl"] = template(
    "intern_vl",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    prefix=(BOS,),
    default_system="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    stop_words=("<|im_end|>",),
    multimodal=True,
)
ENTRIES["keye_vl"] = template("keye_vl", like=text_m_to_z.ENTRIES["qwen3"], multimodal=True)
ENTRIES["kimi_vl"] = template(
    "kimi_vl",
    user=("<|im_user|>user<|im_middle|>{{content}}<|im_end|><|im_assistant|>assistant<|im_middle|>",),
    assistant=("{{content}}<|im_end|>",),
    system=("<|im_system|>system<|im_middle|>{{content}}<|im_end|>",),
    default_system="You are a helpful assistant",
    stop_words=("<|im_end|>",),
    thinking="tags",
    thought_words=("◁think▷", "◁/think▷"),
    multimodal=True,
)
ENTRIES["lfm2_vl"] = template(
    "lfm2_vl",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful multimodal assistant by Liquid AI.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    multimodal=True,
)
ENTRIES["llama4"] = template(
    "llama4",
    user=(
        "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
    ),
    assistant=("{{content}}<|eot|>",),
    system=("<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",),
    prefix=(BOS,),
    stop_words=("<|eot|>", "<|eom|>"),
    replace_eos=True,
    multimodal=True,
)
ENTRIES["llava"] = template(
    "llava",
    user=("USER: {{content}} ASSISTANT:",),
    default_system="A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
    multimodal=True,
)
ENTRIES["llava_next"] = template("llava_next", like=ENTRIES["llava"], multimodal=True)
ENTRIES["llava_next_llama3"] = template(
    "llava_next_llama3", like=text_a_to_l.ENTRIES["llama3"], multimodal=True
)
ENTRIES["llava_next_mistral"] = template(
    "llava_next_mistral", like=text_m_to_z.ENTRIES["mistral"], multimodal=True
)
ENTRIES["llava_next_qwen"] = template(
    "llava_next_qwen",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    multimodal=True,
)
ENTRIES["llava_next_video"] = template("llava_next_video", like=ENTRIES["llava"], multimodal=True)
ENTRIES["llava_next_video_mistral"] = template(
    "llava_next_video_mistral", like=text_m_to_z.ENTRIES["mistral"], multimodal=True
)
ENTRIES["llava_next_video_yi"] = template(
    "llava_next_video_yi", like=text_m_to_z.ENTRIES["smollm"], multimodal=True
)
ENTRIES["llava_next_yi"] = template("llava_next_yi", like=text_m_to_z.ENTRIES["smollm"], multimodal=True)
ENTRIES["mimo_vl"] = template(
    "mimo_vl",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are MiMo, an AI assistant developed by Xiaomi.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    thinking="tags",
    multimodal=True,
)
ENTRIES["minicpm_o"] = template(
    "minicpm_o",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful assistant. You can accept audio and text input and output voice and text.",
    stop_words=("<|im_end|>",),
    multimodal=True,
)
ENTRIES["minicpm_v"] = template(
    "minicpm_v",
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    default_system="You are a helpful assistant.",
    stop_words=("<|im_end|>",),
    multimodal=True,
)
ENTRIES["minicpm_v_4_6"] = template("minicpm_v_4_6", like=ENTRIES["minicpm_v"], multimodal=True)
ENTRIES["ministral3"] = template("ministral3", like=text_m_to_z.ENTRIES["ministral"], multimodal=True)
ENTRIES["mistral_small"] = template(
    "mistral_small",
    user=("[INST]{{content}}[/INST]",),
    system=("[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]",),
    prefix=(BOS,),
    multimodal=True,
)
ENTRIES["mllama"] = template("mllama", like=text_a_to_l.ENTRIES["llama3"], multimodal=True)
ENTRIES["paligemma"] = template(
    "paligemma", user=("{{content}}\n",), prefix=(BOS,), system_in_first_user=True, multimodal=True
)
ENTRIES["paligemma_chat"] = template(
    "paligemma_chat",
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    prefix=(BOS,),
    stop_words=("<end_of_turn>",),
    replace_eos=True,
    system_in_first_user=True,
    multimodal=True,
)
ENTRIES["pixtral"] = template("pixtral", like=text_m_to_z.ENTRIES["ministral"], multimodal=True)
ENTRIES["qwen2_audio"] = template("qwen2_audio", like=ENTRIES["llava_next_qwen"], multimodal=True)
ENTRIES["qwen2_omni"] = template("qwen2_omni", like=ENTRIES["llava_next_qwen"], multimodal=True)
ENTRIES["qwen2_vl"] = template("qwen2_vl", like=ENTRIES["llava_next_qwen"], multimodal=True)
ENTRIES["qwen3_5"] = template("qwen3_5", like=text_m_to_z.ENTRIES["qwen3"], multimodal=True)
ENTRIES["qwen3_5_nothink"] = template(
    "qwen3_5_nothink", like=text_m_to_z.ENTRIES["qwen3_nothink"], multimodal=True
)
ENTRIES["qwen3_6"] = template("qwen3_6", like=text_m_to_z.ENTRIES["qwen3"], multimodal=True)
ENTRIES["qwen3_omni"] = template("qwen3_omni", like=text_m_to_z.ENTRIES["qwen3"], multimodal=True)
ENTRIES["qwen3_omni_nothink"] = template(
    "qwen3_omni_nothink", like=text_m_to_z.ENTRIES["qwen3_nothink"], multimodal=True
)
ENTRIES["qwen3_vl"] = template("qwen3_vl", like=text_m_to_z.ENTRIES["qwen3"], multimodal=True)
ENTRIES["qwen3_vl_nothink"] = template(
    "qwen3_vl_nothink", like=text_m_to_z.ENTRIES["qwen3_nothink"], multimodal=True
)
ENTRIES["video_llava"] = template("video_llava", like=ENTRIES["llava"], multimodal=True)
ENTRIES["yi_vl"] = template(
    "yi_vl",
    user=("### Human: {{content}}\n### Assistant:",),
    assistant=("{{content}}\n",),
    default_system="This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. Read all the images carefully, and respond to the human's questions with informative, helpful, detailed and polite answers. 这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。\n\n",
    stop_words=("###",),
    efficient_eos=True,
    multimodal=True,
)
ENTRIES["youtu_vl"] = template(
    "youtu_vl",
    user=("<|begin_of_text|>user\n{{content}}<|end_of_text|>\n<|begin_of_text|>assistant\n",),
    assistant=("{{content}}<|end_of_text|>\n",),
    system=("<|begin_of_text|>system\n{{content}}<|end_of_text|>\n",),
    default_system="You are a helpful assistant.",
    stop_words=("<|end_of_text|>",),
    multimodal=True,
)
