"""Config parsing and validation: each error names the key (or file) and what is wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from trainer.config import load_config, parse_override
from trainer.errors import ConfigError
from trainer.losses import loss_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base(tmp_path) -> dict:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.json").write_text("[]")
    info = {"pairs": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True}}
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    return {
        "model_name_or_path": str(tmp_path / "model"),
        "stage": "dpo",
        "finetuning_type": "lora",
        "dataset": "pairs",
        "dataset_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "out"),
    }


def error(raw: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    return str(info.value)


def test_llama_factory_example_parses_unchanged(tmp_path, base):
    """LLaMA-Factory's llama3_lora_dpo.yaml parses (after pointing it at local data)."""
    raw = yaml.safe_load((REPO / "configs" / "llama3_lora_dpo.yaml").read_text())
    raw.update(dataset=base["dataset"], dataset_dir=base["dataset_dir"], output_dir=base["output_dir"])
    raw["bf16"] = False  # no bf16 on this CPU
    cfg = load_config(raw)
    assert cfg.finetuning.pref_beta == 0.1
    assert cfg.training["learning_rate"] == 5.0e-6
    # transformers 5 dropped warmup_ratio: a float warmup_steps < 1 is the ratio
    assert cfg.training["warmup_steps"] == 0.1
    assert cfg.finetuning.overwrite_output_dir is True
    assert cfg.training_arguments().get_warmup_steps(1000) == 100
    # LLaMA-Factory's original line `trust_remote_code: true` needs the code pinned to a reviewed commit
    raw["trust_remote_code"] = True
    with pytest.raises(ConfigError, match="add `model_revision: <the full 40-character commit sha"):
        load_config(raw)
    raw["model_revision"] = "0123456789abcdef0123456789abcdef01234567"
    assert load_config(raw).model.trust_remote_code is True


def test_overrides_are_typed_and_reach_ray_section(base):
    cfg = load_config(base, ["pref_beta=0.25", "ray.num_workers=2", "use_ray=false", "learning_rate=5e-6"])
    assert cfg.finetuning.pref_beta == 0.25
    assert cfg.ray.num_workers == 2
    assert cfg.use_ray is False
    assert math.isclose(cfg.training["learning_rate"], 5e-6)
    assert parse_override("x=null") == ("x", None)


def test_resolved_config_round_trips(base):
    cfg = load_config(base, ["pref_loss=simpo"])
    assert cfg.finetuning.simpo_gamma == 0.5  # LLaMA-Factory's default, filled in for simpo
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again.to_flat_dict() == cfg.to_flat_dict()


def test_kto_stage_uses_kto_loss(base):
    assert load_config(base, ["stage=kto"]).loss_name == "kto"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["pref_bta=0.1"], "unknown config key 'pref_bta'; did you mean 'pref_beta'?"),
        (["learning_rat=1e-5"], "did you mean 'learning_rate'?"),
        (["ray.num_worker=2"], "unknown config key ray.'num_worker'; did you mean 'num_workers'?"),
        (["stage=sft"], "stage 'sft' is not supported"),
        (["stage=ppo"], "stage 'ppo' is not supported"),
        (["stage=pt"], "stage 'pt' is not supported"),
        (["stage=rm"], "stage 'rm' is not supported"),
        (["pref_beta=0"], "pref_beta must be > 0, got 0.0"),
        (["pref_beta=-0.5"], "pref_beta must be > 0, got -0.5"),
        (["simpo_gamma=1.0"], "simpo_gamma is only used by pref_loss simpo, but pref_loss is 'sigmoid'"),
        (["pref_loss=ipo", "simpo_gamma=1.0"], "simpo_gamma is only used by pref_loss simpo, but pref_loss is 'ipo'"),
        (["dpo_label_smoothing=0.5"], "dpo_label_smoothing must be in [0, 0.5), got 0.5"),
        (["dpo_label_smoothing=-0.1"], "dpo_label_smoothing must be in [0, 0.5), got -0.1"),
        (["pref_loss=hinge", "dpo_label_smoothing=0.1"], "dpo_label_smoothing is only used by pref_loss sigmoid"),
        (["pref_loss=orpo", "ref_model=/some/model"], "ref_model is set but pref_loss 'orpo' is reference-free"),
        (["pref_loss=simpo", "ref_model=/some/model"], "ref_model is set but pref_loss 'simpo' is reference-free"),
        (["cutoff_len=1"], "cutoff_len must be >= 2"),
        (["dataset=missing_set"], "dataset 'missing_set' is not in"),
        (["dataset=pair"], "did you mean 'pairs'?"),
        (["pref_loss=sigmod"], "pref_loss: "),
        (["pref_beta=abc"], "pref_beta: expected a number, got 'abc'"),
        (["finetuning_type=qlora"], "finetuning_type 'qlora' is not one of"),
        (["template=llama3.1"], "template 'llama3.1' is unknown; did you mean 'llama3'"),
        (["eval_strategy=steps"], "eval_strategy is 'steps' but there is no eval_dataset and val_size is 0"),
        (["kto_chosen_weight=0"], "kto_chosen_weight must be > 0"),
        (["val_size=1.5"], "val_size must be a fraction in [0, 1) or a whole count"),
        (["model_name_or_path=null"], "model_name_or_path is required"),
        (["dataset_dir=/nonexistent"], "/nonexistent/dataset_info.json does not exist"),
    ],
)
def test_config_errors_name_the_key(base, overrides, expected):
    assert expected in error(base, overrides)


def test_pref_loss_typo_names_nearest_loss(base):
    message = error(base, ["pref_loss=sigmod"])
    assert "'sigmoid'" in message


def test_output_dir_with_checkpoint_needs_resume_choice(base, tmp_path):
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    message = error(base)
    assert "holds checkpoint checkpoint-4" in message and "resume_from_checkpoint" in message
    assert load_config(base, ["resume_from_checkpoint=true"]).training["resume_from_checkpoint"] is True
    assert load_config(base, ["overwrite_output_dir=true"]).finetuning.overwrite_output_dir is True


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [dpo\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unreadable_dataset_info_names_the_file(base, tmp_path):
    (tmp_path / "data" / "dataset_info.json").write_text("{not json")
    assert "dataset_info.json: cannot be read as JSON" in error(base)


def test_every_paired_loss_is_accepted(base):
    for name in loss_names("dpo"):
        assert load_config(base, [f"pref_loss={name}"]).loss_name == name
