"""LLaMA-Factory 0.9.5's own data pipeline, run in its peer venv (~/.cache/prefsweep-lf-peer), for tests that
compare our tokenized rows with LF's. Tests that need it skip where the venv is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

LF_PEER = Path.home() / ".cache" / "prefsweep-lf-peer"
LF_PYTHON = LF_PEER / "venv" / "bin" / "python"

# Prepended to every script: `lf_dataset` runs LF's `get_template_and_fix_tokenizer` + `get_dataset` on a
# fresh tokenizer; `strip` drops LF's multimodal columns; the script prints "@@LF@@" + its JSON.
LF_PRELUDE = textwrap.dedent(
    """
    import json, sys, tempfile
    from transformers import AutoTokenizer, Seq2SeqTrainingArguments
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.data import get_template_and_fix_tokenizer, get_dataset

    def lf_dataset(tok_dir, data_dir, template, dataset, stage, processor=None, **data_kwargs):
        tok = AutoTokenizer.from_pretrained(tok_dir, padding_side="right")
        data_args = DataArguments(template=template, dataset=dataset, dataset_dir=data_dir, overwrite_cache=True,
                                  **data_kwargs)
        training_args = Seq2SeqTrainingArguments(output_dir=tempfile.mkdtemp(), seed=42, report_to="none")
        template = get_template_and_fix_tokenizer(tok, data_args)
        module = get_dataset(template, ModelArguments(model_name_or_path=tok_dir), data_args, training_args,
                             stage=stage, tokenizer=tok, processor=processor)
        return module, tok

    strip = lambda ds: [{k: v for k, v in r.items() if k not in ("images", "videos", "audios")} for r in ds]
    """
)


def run_llamafactory(script: str, *args: object, cache: Path) -> dict:
    """Run LF_PRELUDE + `script` (dedented) with `args` as sys.argv[1:]; returns the JSON it printed."""
    env = {**os.environ, "PYTHONPATH": str(LF_PEER / "stubs"), "HF_DATASETS_CACHE": str(cache)}
    proc = subprocess.run(
        [str(LF_PYTHON), "-c", LF_PRELUDE + textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("@@LF@@", 1)[1])
