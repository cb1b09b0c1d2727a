"""LLaMA-Factory 0.9.5's whole config surface for dpo/kto: every argument is honoured, mapped or refused by
name (`trainer/config/lf_keys.py`), the published table is current, and LF-style configs written from
LF's documentation parse and train on the tiny model.

`fixtures/lf_0_9_5_arguments.json` lists LF 0.9.5's ModelArguments, DataArguments, FinetuningArguments,
RayArguments and its TrainingArguments additions with their defaults, as read from LF's dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import datasets
import pytest
import yaml

from rayjobs import train
from trainer.config import load_config
from trainer.config.lf_keys import (
    EXAMPLE_TRAINING_KEYS,
    HONOURED,
    LF_TRAINING_EXTRAS,
    MAPPED,
    REFUSED,
    map_lf_keys,
    render_docs,
)
from trainer.config.parsing import training_fields
from trainer.config.schema import GROUPS
from trainer.data.pipeline import _merge
from trainer.data.sources import Source
from trainer.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
LF_ARGS = json.loads((FIXTURES / "lf_0_9_5_arguments.json").read_text())
LF_DEFAULTS = {key: default for group in LF_ARGS.values() for key, default in group.items()}


def test_every_lf_argument_is_honoured_mapped_or_refused():
    schema = {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    for key in LF_DEFAULTS:
        kinds = [key in HONOURED, key in MAPPED, key in REFUSED or key in LF_TRAINING_EXTRAS]
        assert sum(kinds) == 1, f"{key}: {kinds}"
    assert set(HONOURED) <= schema
    assert set(EXAMPLE_TRAINING_KEYS) - {"warmup_ratio"} <= set(training_fields())


def test_refused_keys_accept_exactly_lf_defaults():
    for key, (default, _) in {**REFUSED, **LF_TRAINING_EXTRAS}.items():
        if isinstance(default, frozenset):
            assert LF_DEFAULTS[key] in default, key
        else:
            assert default == LF_DEFAULTS[key], key


def test_docs_table_is_generated_from_the_code():
    text = (REPO / "docs" / "lf_config_keys.md").read_text()
    assert text == render_docs(), "regenerate: python -m trainer.config.lf_keys > docs/lf_config_keys.md"
    keys = [line.split("`")[1] for line in text.splitlines() if line.startswith("| `")]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(LF_DEFAULTS) | set(EXAMPLE_TRAINING_KEYS) | set(MAPPED)


@pytest.fixture
def base(data_dir, tmp_path) -> dict:
    return {"model_name_or_path": "m", "dataset": "pairs", "dataset_dir": str(data_dir),
            "output_dir": str(tmp_path / "out")}


def one_line(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("quantization_bit", 4, "QLoRA"),
        ("streaming", True, "max_samples"),
        ("use_unsloth", True, "custom kernels"),
        ("packing", True, "not packed"),
        ("adapter_name_or_path", "saves/lora", "merge an adapter"),
        ("hf_hub_token", "hf_x", "HF_TOKEN"),
        ("use_galore", True, "GaLore"),
        ("image_max_pixels", 100, "text-only"),
        ("enable_torch_profiler", True, "profile"),
        ("master_port", "29500", "Ray Train sets up the process group"),
    ],
)
def test_refused_key_names_itself_and_why(base, key, value, fragment):
    message = one_line({**base, key: value})
    assert message.startswith(f"{key}: {value!r} is not supported by prefsweep: ") and fragment in message


def test_every_refused_key_is_one_line_naming_it():
    """A value other than LF's default (a string no key takes by default) for each refused key."""
    for key in list(REFUSED) + list(LF_TRAINING_EXTRAS):
        if isinstance(REFUSED.get(key, (None,))[0], frozenset):
            continue  # accepted either way
        with pytest.raises(ConfigError) as err:
            map_lf_keys({key: "surely-not-default"})
        message = str(err.value)
        assert message.startswith(f"{key}: 'surely-not-default' is not supported by prefsweep: ") and "\n" not in message


def test_refused_keys_at_their_lf_default_parse(base):
    defaults = {k: LF_DEFAULTS[k] for k in list(REFUSED)[:40] + list(LF_TRAINING_EXTRAS)}
    load_config({**base, **defaults})


def test_lf_ray_keys_map_onto_the_ray_section(base):
    cfg = load_config({**base, "ray_num_workers": 2, "resources_per_worker": {"CPU": 2}, "placement_strategy": "SPREAD",
                       "ray_storage_path": "/tmp/r", "ray_run_name": "exp1", "ray_init_kwargs": {"num_cpus": 4}})
    ray = cfg.ray
    assert (ray.num_workers, ray.resources_per_worker, ray.placement_strategy) == (2, {"CPU": 2}, "SPREAD")
    assert (ray.storage_path, ray.run_name, ray.init_kwargs) == ("/tmp/r", "exp1", {"num_cpus": 4})
    assert train.scaling_config(cfg).placement_strategy == "SPREAD"
    assert "conflicts with ray.num_workers" in one_line({**base, "ray_num_workers": 2, "ray": {"num_workers": 3}})
    assert "set RAY_ADDRESS" in one_line({**base, "ray_init_kwargs": {"address": "auto"}})
    assert "'FAST'" in one_line({**base, "placement_strategy": "FAST"})


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"fp16": True, "use_ray": False}, ["fp16: true needs a GPU", "bf16: true"]),
        ({"fp16": True}, ["fp16: true needs a GPU", "ray.use_gpu: true"]),
        ({"report_to": "wandb"}, ["report_to: wandb is not installed", "MLflow"]),
        ({"interleave_probs": "0.5,0.5"}, ["interleave_probs", "mix_strategy is concat"]),
        ({"mix_strategy": "interleave_under", "interleave_probs": "0.7,0.7"}, ["interleave_probs", "1 non-negative"]),
        ({"mix_strategy": "shuffle"}, ["mix_strategy", "'shuffle'"]),
    ],
)
def test_lf_values_that_cannot_run_here_are_one_line(base, changes, fragments):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available() and changes.get("use_ray") is False:
        pytest.skip("this machine has a GPU")
    message = one_line({**base, **changes})
    for fragment in fragments:
        assert fragment in message


def _source(tag: str, n: int) -> Source:
    rows = datasets.Dataset.from_list([{"tag": f"{tag}{i}"} for i in range(n)])
    return Source(name=tag, attr=None, rows=rows)


@pytest.mark.parametrize("strategy", ["interleave_under", "interleave_over"])
def test_interleaving_keeps_each_dataset_in_order_and_stops_as_lf(strategy):
    """`under` stops when one dataset runs out (its rows all present once); `over` when every one has
    run out (each dataset's rows all present, the shorter repeated from its start)."""
    args = type("A", (), {"mix_strategy": strategy, "interleave_probs": "0.5,0.5"})()
    tags = _merge([_source("a", 3), _source("b", 6)], args, seed=0)["tag"]
    a, b = [t for t in tags if t[0] == "a"], [t for t in tags if t[0] == "b"]
    cycle_a, cycle_b = [f"a{i % 3}" for i in range(len(a))], [f"b{i % 6}" for i in range(len(b))]
    assert a == cycle_a and b == cycle_b  # each source read in order (repeated from its start when over)
    if strategy == "interleave_under":
        assert len(a) == 3 or len(b) == 6
        assert len(a) <= 3 and len(b) <= 6
    else:
        assert len(a) >= 3 and len(b) >= 6
    concat = type("A", (), {"mix_strategy": "concat", "interleave_probs": None})()
    assert _merge([_source("a", 3), _source("b", 2)], concat, seed=0)["tag"] == ["a0", "a1", "a2", "b0", "b1"]


def lf_config(name: str, tmp_path: Path, **changes) -> Path:
    raw = {**yaml.safe_load((FIXTURES / "lf_configs" / name).read_text()), **changes}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def first_loss(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(entry["loss"] for entry in state["log_history"] if "loss" in entry)


def test_lf_style_kto_config_trains_with_bf16_on_cpu(tiny_model, data_dir, tmp_path, capsys):
    """LoRA starts as its reference (adapters off): the first KTO loss is 0.5."""
    path = lf_config("qwen3_lora_kto.yaml", tmp_path, model_name_or_path=str(tiny_model), dataset="kto",
                     dataset_dir=str(data_dir), output_dir=str(tmp_path / "kto"), use_ray=False, max_steps=2,
                     dataloader_num_workers=0, preprocessing_num_workers=1, cutoff_len=128)  # keep it cheap
    train.run(path, track=False)
    assert first_loss(tmp_path / "kto") == pytest.approx(0.5, abs=1e-4)


def test_lf_style_dpo_config_with_mix_and_eval_dataset_trains(tiny_model, data_dir, tmp_path):
    """Two datasets (a registered sharegpt one and a TRL file) interleaved, a separate eval dataset; the
    full-tuning reference is a frozen copy, so the first loss is log 2."""
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    pairs = json.loads((data / "pairs.json").read_text())
    (data / "trl_pairs.jsonl").write_text("\n".join(json.dumps(
        {"prompt": p["conversations"][0]["value"], "chosen": p["chosen"]["value"], "rejected": p["rejected"]["value"]})
        for p in pairs))
    info = json.loads((data / "dataset_info.json").read_text())
    info["dpo_en_demo"] = info["dpo_eval"] = info["pairs"]
    (data / "dataset_info.json").write_text(json.dumps(info))
    path = lf_config("llama3_full_dpo_mix.yaml", tmp_path, model_name_or_path=str(tiny_model), dataset_dir=str(data),
                     output_dir=str(tmp_path / "dpo"), use_ray=False, max_steps=1, eval_steps=1, cutoff_len=128)
    metrics = train.run(path, track=False)
    assert first_loss(tmp_path / "dpo") == pytest.approx(math.log(2), abs=1e-4)
    assert "eval_loss" in metrics and math.isfinite(metrics["eval_loss"])


def test_lf_current_dpo_example_is_accepted_unchanged_but_the_model(tmp_path, monkeypatch, caplog):
    """LF's qwen3 LoRA DPO example with the model pointed at a local folder holding Qwen3's real tokenizer:
    the driver's parse and model check pass (trust_remote_code: one warning, no code in the folder)."""
    tokenizer = REPO.parent / "shared" / "tokenizers" / "qwen3"
    if not tokenizer.is_dir():
        pytest.skip(f"{tokenizer} (the published Qwen3 tokenizer) is not on this machine")
    model = Path(shutil.copytree(tokenizer, tmp_path / "qwen3-local"))
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}))
    monkeypatch.chdir(REPO)  # dataset_dir: data (LF's default), as from a checkout
    path = lf_config("qwen3_lora_dpo.yaml", tmp_path, model_name_or_path=str(model))
    cfg = train.prepare_config(path)
    assert (cfg.data.template, cfg.data.preprocessing_num_workers, cfg.training["ddp_timeout"]) == \
        ("qwen3_nothink", 16, 180000000)
    assert cfg.model.trust_remote_code is True and cfg.training["bf16"] is True
    assert [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()] != []
