"""Build a tiny Llama-architecture model and a byte-level BPE tokenizer offline, deterministically.

`build_tiny_model` trains the tokenizer on the text of local data files and initialises random weights
from a seed, so tests, the laptop demo and benchmarks run without a model hub. Same seed and same data
give byte-identical `model.safetensors` and `tokenizer.json`.

Special tokens and why bos/eos/pad are what they are
----------------------------------------------------
LLaMA-Factory (0.9.5, `data/template.py: Template.fix_special_tokens`) edits the tokenizer when a
template is chosen; any token it has to *add* gets an id past the embedding matrix (it warns "New tokens
have been added, make sure `resize_vocab` is True"). What the templates we serve do:

- `default`, `empty`: no stop words, no `replace_eos`; they only add `<|endoftext|>` as eos when the
  tokenizer has no eos, and set pad = eos when it has no pad.
- `chatml`: `replace_eos=True`, stop words `<|im_end|>`, `<|im_start|>`: eos becomes `<|im_end|>`, and
  `<|im_start|>` is registered as an extra special token.
- `qwen`: `replace_eos=True`, stop word `<|im_end|>`.
- `llama3`: `replace_eos=True`, stop words `<|eot_id|>`, `<|eom_id|>`: eos becomes `<|eot_id|>` and
  `<|eom_id|>` is registered; the prefix is the bos token and the turns use `<|start_header_id|>`,
  `<|end_header_id|>`.

Beyond these, every template of the registry (`trainer/data/templates/`) names its markup and stop words
(`<start_of_turn>`, `<|user|>`, ...): they are added as special tokens after the BPE vocabulary, so any
template runs on the tiny model without growing the vocabulary.

So every token above is in the trained vocab as a special token (`<|eom_id|>` included: without it
`llama3` would add a token), eos is `<|im_end|>` (the ChatML turn end our own chat template uses; chatml
and qwen then change nothing), pad is `<|endoftext|>` (present, so no template sets pad = eos, and padding
stays distinguishable from a real end of turn), and bos is `<|begin_of_text|>` (what `llama3` writes as its
prefix). The tokenizer adds no bos/eos on its own when encoding (like Qwen's): templates decide.

Vocabulary size
---------------
BPE stops early when the data has no more pairs to merge (the 300-example demo file gives ~31k of a
requested 32000). The rest is filled with regular added tokens `<|reserved_N|>`, so
`len(tokenizer) == vocab_size` always and the model's embedding has exactly that many rows.

CLI (called by the `prefsweep` dispatcher, argv without the subcommand name)::

    prefsweep make-tiny-model OUT --data FILE [--data FILE2] [--vocab-size N] [--seed S]
        [--warmup DATASET [--warmup-dataset-dir DIR] [--warmup-skip N] [--warmup-steps N]]

`--warmup` trains the random model briefly on a dataset's prompts and chosen answers
(`trainer.tiny_warmup`), so a demo's DPO starts from log-probs that mean something.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.errors import DataError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"

BOS_TOKEN = BEGIN_OF_TEXT
EOS_TOKEN = IM_END
PAD_TOKEN = ENDOFTEXT
# Order fixes the ids: <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2, ...
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT, EOM)
RESERVED_TOKEN = "<|reserved_{}|>"
N_BYTES = 256  # byte-level alphabet: every byte has a token, so any text round-trips

# ChatML, the same text LLaMA-Factory's `chatml` template produces; the system turn is whatever the
# caller passes (no default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def iter_texts(data_files: list[Path]) -> Iterator[str]:
    """Every string value in the files, in file order.

    `.json`: one document; `.jsonl`: one document per non-empty line; strings are collected recursively
    through dicts (values only) and lists. Any other suffix is read as plain text.
    """
    for path in map(Path, data_files):
        if path.suffix == ".json":
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err})") from err
            yield from _strings(doc)
        elif path.suffix == ".jsonl":
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from err
                yield from _strings(doc)
        else:
            yield path.read_text(encoding="utf-8")


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def template_special_tokens() -> list[str]:
    """The special tokens every chat template names (stop words, markup), in a fixed order."""
    from trainer.data.templates import TEMPLATES

    return list(dict.fromkeys(t for entry in TEMPLATES.values() for t in entry.special_tokens))


def train_tokenizer(texts: list[str], *, vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, padded with `<|reserved_N|>` to exactly `vocab_size` tokens."""
    min_size = len(SPECIAL_TOKENS) + N_BYTES
    if vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size} is below {min_size} (special tokens + 256 bytes)")

    tokenizer = Tokenizer(models.BPE())
    # GPT-2 style: split on the byte-level regex, map bytes to printable unicode, no normalizer (a
    # normalizer such as NFC would break the exact round-trip of arbitrary text).
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Every template's markup and stop words become special tokens too, so any template runs without LF
    # adding tokens past the embedding; BPE gets the rest of the vocabulary (a vocabulary too small for
    # them, below ~340, keeps only the base special tokens). A bare word (chatglm3's `sop`) is matched as a
    # whole word only.
    extra = [t for t in template_special_tokens() if t not in SPECIAL_TOKENS]
    if vocab_size < min_size + len(extra):
        extra = []
    bpe = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extra),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=bpe)

    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, single_word=t.isalnum()) for t in extra]
    )
    n_missing = vocab_size - tokenizer.get_vocab_size()
    if n_missing > 0:
        tokenizer.add_tokens(
            [AddedToken(RESERVED_TOKEN.format(i), special=False, normalized=False) for i in range(n_missing)]
        )

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)] + extra,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
    )


def build_tiny_model(
    out_dir: Path | str,
    data_files: list[Path],
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
) -> Path:
    """Write a random-weight float32 LlamaForCausalLM and its tokenizer to `out_dir`; return `out_dir`.

    The tokenizer is trained on every string in `data_files` (see `iter_texts`); the weights depend only
    on `seed` and the shapes. `AutoTokenizer.from_pretrained(out_dir)` and
    `AutoModelForCausalLM.from_pretrained(out_dir)` load the result.
    """
    if not data_files:
        raise ValueError("build_tiny_model needs at least one data file to train the tokenizer on")
    texts = list(iter_texts(data_files))
    if not any(texts):
        raise DataError(f"no text found in {', '.join(map(str, data_files))}")

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # Own RNG stream: the weights depend on `seed` alone, and the caller's global RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)  # transformers 5 always writes safetensors (model.safetensors)
    return out_dir


DEMO_DATA = "data/dpo_en_demo.json"
"""The demo pairs (relative to the checkout root) the default tiny model's tokenizer is trained on."""


def ensure_tiny_model(out_dir: Path | str) -> bool:
    """Build the default tiny model (`prefsweep make-tiny-model OUT`: DEMO_DATA, vocab 1024, seed 0, warmed up
    on the demo pairs after the first 64) at
    `out_dir` unless it already holds a model; True when it was built. Deterministic: the same files as
    `make tiny-model` writes, so a job that cannot see the user's copy builds an equal one."""
    if (Path(out_dir) / "config.json").is_file():
        return False
    from trainer.tiny_warmup import DEMO_WARMUP, warm_up_model_dir

    build_tiny_model(out_dir, [Path(DEMO_DATA)])
    warm_up_model_dir(out_dir, **DEMO_WARMUP)  # as `make tiny-model` (Makefile) warms it up
    return True


def main(argv: list[str] | None = None) -> int:
    """`prefsweep make-tiny-model OUT --data FILE [--data FILE2] [--vocab-size N] [--seed S]`."""
    parser = argparse.ArgumentParser(
        prog="prefsweep make-tiny-model",
        description="Build a tiny random Llama model and a BPE tokenizer trained on local data (offline).",
    )
    parser.add_argument("out", type=Path, help="output directory (model + tokenizer)")
    parser.add_argument(
        "--data", type=Path, action="append",
        help=f"json / jsonl / text file whose strings train the tokenizer (repeatable; default {DEMO_DATA})",
    )
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer and embedding size (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    from trainer import tiny_warmup

    tiny_warmup.add_arguments(parser)
    args = parser.parse_args(argv)
    out = build_tiny_model(args.out, args.data or [Path(DEMO_DATA)], vocab_size=args.vocab_size, seed=args.seed)
    tiny_warmup.run_from_args(out, args)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
