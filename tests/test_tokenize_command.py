"""`prefsweep tokenize` and `tokenized_path`: what is saved, what a later run loads, and what it refuses."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import AutoTokenizer

from rayjobs.cli import main as prefsweep
from tests.template_cases import GOLDENS, build_tiny_tokenizer, write_data
from trainer.config import load_config
from trainer.data import load_preference_data
from trainer.data.tokenized_path import META_FILE
from trainer.errors import ConfigError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize")
    data = write_data(root)
    model = build_tiny_tokenizer(root, data)
    config = root / "dpo.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(model), "stage": "dpo", "do_train": True, "finetuning_type": "full", "dataset": "pairs_alpaca",
        "dataset_dir": str(data), "template": "llama3", "cutoff_len": 64, "output_dir": str(root / "out"),
        "report_to": "none",
    }), encoding="utf-8")
    return root, config


def test_tokenize_saves_the_data_and_shows_the_mask(setup, capsys):
    root, config = setup
    assert prefsweep(["tokenize", str(config), "--examples", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"1 train examples (stage dpo, template llama3, cutoff_len 64) in {root / 'out' / 'tokenized'}"
    # the alpaca row "Name a primary color." + "Just one.": the prompt masked, "Red." and eot trained
    prompt = ("⟦<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a primary color.\nJust one."
              "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n⟧")
    text = "\n".join(out)
    # the counts are those of LF's golden for this row (tests/fixtures/template_goldens/tiny.json)
    prompt_ids, chosen_ids, rejected_ids = json.loads((GOLDENS / "tiny.json").read_text())["llama3"]["pairs"][4]
    assert (len(prompt_ids), len(chosen_ids), len(rejected_ids)) == (22, 3, 3)
    assert f"--- example 0, chosen: 25 tokens, 22 masked, 3 trained\n{prompt}Red.<|eot_id|>\n" in text
    assert text.endswith(f"--- example 0, rejected: 25 tokens, 22 masked, 3 trained\n{prompt}Seven.<|eot_id|>")
    assert (root / "out" / "tokenized" / META_FILE).is_file()


def test_tokenized_path_loads_what_it_saved_and_refuses_other_settings(setup, tmp_path):
    root, config = setup
    path = tmp_path / "tok"
    cfg = load_config(str(config), [f"tokenized_path={path}"])

    def load(overrides=(), tokenizer_dir=None):
        data_args = load_config(str(config), [f"tokenized_path={path}", *overrides]).data
        tok = AutoTokenizer.from_pretrained(tokenizer_dir or cfg.model.model_name_or_path)
        return load_preference_data(data_args, tok, stage="dpo", seed=42, cache_dir=tmp_path / "cache")

    made = load()
    again = load(["dataset=pairs_sharegpt"])  # a saved folder is loaded; the dataset keys are not read
    assert made.fingerprint == again.fingerprint and again.train.column_names == made.train.column_names
    assert again.train[0]["chosen_input_ids"][-2:] == made.train[0]["chosen_input_ids"][-2:]
    with pytest.raises(ConfigError, match=r"made with another template \(saved 'llama3', now 'qwen3'\)"):
        load(["template=qwen3"])
    with pytest.raises(ConfigError, match=r"another cutoff_len \(saved 64, now 32\)"):
        load(["cutoff_len=32"])
    other = build_tiny_tokenizer(tmp_path / "other", write_data(tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"another tokenizer \(saved with '.*/tiny', now '.*other/tiny'\)"):
        load(tokenizer_dir=other)
    (path / META_FILE).unlink()  # e.g. a folder LLaMA-Factory wrote: nothing says how it was made
    with pytest.raises(ConfigError, match=rf"holds no {META_FILE}, so its template, tokenizer and cutoff_len"):
        load()


@pytest.mark.parametrize(("overrides", "golden"), [(["template=qwen3", "enable_thinking=false"], "qwen3/nothink"),
                                                   (["template=gemma3"], "gemma3")])
def test_config_keys_reach_the_template(setup, tmp_path, overrides, golden):
    """What a user types (template, enable_thinking) gives LF's tokens through the whole data pipeline."""
    _, config = setup
    cfg = load_config(str(config), overrides)
    tok = AutoTokenizer.from_pretrained(cfg.model.model_name_or_path)
    data = load_preference_data(cfg.data, tok, stage="dpo", seed=42, cache_dir=tmp_path)
    row = data.train[0]
    expected = json.loads((GOLDENS / "tiny.json").read_text())[golden]["pairs"][4]  # the alpaca row
    assert row["chosen_input_ids"] == expected[0] + expected[1]
    assert row["rejected_labels"] == [-100] * len(expected[0]) + expected[2]


def test_the_console_script_leaves_a_complete_dataset(setup, tmp_path):
    """`prefsweep tokenize` as a user types it (the installed console script, which ends with
    `rayjobs.cli.finish_process`): what it saved loads as the same rows as the in-process command's."""
    import subprocess
    import sys
    from pathlib import Path

    from datasets import load_from_disk

    root, config = setup
    script = Path(sys.executable).parent / "prefsweep"
    done = subprocess.run([str(script), "tokenize", str(config), "--out", str(tmp_path / "script")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert prefsweep(["tokenize", str(config), "--out", str(tmp_path / "here"), "--examples", "0"]) == 0
    script_rows = load_from_disk(str(tmp_path / "script" / "train")).to_list()
    here_rows = load_from_disk(str(tmp_path / "here" / "train")).to_list()
    assert script_rows == here_rows and len(script_rows) == 1
    assert (json.loads((tmp_path / "script" / META_FILE).read_text())
            == json.loads((tmp_path / "here" / META_FILE).read_text()))
