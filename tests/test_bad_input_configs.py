"""Bad training configs and sweep specs: each gives one ConfigError, on one line, naming the key or file.

Complements tests/test_config.py (typos, stages, loss combinations, cutoff_len, template) and
tests/test_sweep_spec.py: wrong types, `ray:` settings, step counts, impossible combinations, missing or
broken files (`dataset_info.json`, data files, DeepSpeed config, base config) and the trust_remote_code rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.config import load_config
from trainer.errors import ConfigError

SHA = "0123456789abcdef0123456789abcdef01234567"
PAIRS = {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True}


@pytest.fixture
def base(tmp_path) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.json").write_text("[]")
    (data / "dataset_info.json").write_text(json.dumps({"pairs": PAIRS}))
    return {
        "model_name_or_path": str(tmp_path / "model"),
        "stage": "dpo",
        "dataset": "pairs",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / "out"),
    }


def info(**entries) -> dict[str, str | bytes]:
    """Files for the data dir: a dataset_info.json of `entries` (name -> entry)."""
    return {"dataset_info.json": json.dumps(entries)}


# (id, config changes, files written into dataset_dir, fragments the message must hold: key or file first)
CONFIGS = [
    # wrong types
    ("learning_rate-word", {"learning_rate": "fast"}, {}, ["learning_rate", "expected a number"]),
    ("num_train_epochs-list", {"num_train_epochs": [3]}, {}, ["num_train_epochs", "expected a number"]),
    ("batch-size-fraction", {"per_device_train_batch_size": 1.5}, {}, ["per_device_train_batch_size", "integer"]),
    ("seed-word", {"seed": "abc"}, {}, ["seed", "expected an integer"]),
    ("cutoff_len-word", {"cutoff_len": "long"}, {}, ["cutoff_len", "expected an integer"]),
    ("lora_rank-word", {"lora_rank": "eight"}, {}, ["lora_rank", "expected an integer"]),
    ("do_train-string", {"do_train": "yes"}, {}, ["do_train", "expected true or false"]),
    ("trust_remote_code-string", {"trust_remote_code": "false"}, {}, ["trust_remote_code", "true or false"]),
    ("dataset-list", {"dataset": ["pairs"]}, {}, ["dataset", "expected a string"]),
    ("model_revision-list", {"model_revision": [1]}, {}, ["model_revision", "expected a string"]),
    ("pref_beta-nan", {"pref_beta": float("nan")}, {}, ["pref_beta", "finite number"]),
    ("learning_rate-inf", {"learning_rate": float("inf")}, {}, ["learning_rate", "finite number"]),
    ("lr_scheduler_type-unknown", {"lr_scheduler_type": "bogus"}, {}, ["lr_scheduler_type", "'cosine'"]),
    ("optim-unknown", {"optim": "adamw_bogus"}, {}, ["optim", "'adamw_torch'"]),
    ("save_strategy-unknown", {"save_strategy": "sometimes"}, {}, ["save_strategy", "'steps'"]),
    ("resume-number", {"resume_from_checkpoint": 5}, {}, ["resume_from_checkpoint", "true, false or a path"]),
    # the ray: section
    ("ray-string", {"ray": "abc"}, {}, ["ray", "mapping"]),
    ("ray-list", {"ray": [{"num_workers": 2}]}, {}, ["ray", "mapping"]),
    ("ray.num_workers-word", {"ray": {"num_workers": "two"}}, {}, ["ray.num_workers", "integer"]),
    ("ray.num_workers-zero", {"ray": {"num_workers": 0}}, {}, ["ray.num_workers", ">= 1"]),
    ("ray.use_gpu-string", {"ray": {"use_gpu": "yes"}}, {}, ["ray.use_gpu", "true or false"]),
    ("ray.resources-list", {"ray": {"resources_per_worker": [1, 2]}}, {}, ["ray.resources_per_worker", "dict"]),
    ("ray.resources-word", {"ray": {"resources_per_worker": {"CPU": "four"}}}, {}, ["ray.resources_per_worker.CPU"]),
    ("ray.resources-negative", {"ray": {"resources_per_worker": {"GPU": -1}}}, {}, ["ray.resources_per_worker.GPU"]),
    ("ray.max_failures", {"ray": {"max_failures": -2}}, {}, ["ray.max_failures", "-1 to retry forever"]),
    ("ray.num_to_keep", {"ray": {"num_to_keep": 0}}, {}, ["ray.num_to_keep", ">= 1"]),
    ("ray.storage_path-list", {"ray": {"storage_path": ["a"]}}, {}, ["ray.storage_path", "expected a string"]),
    ("use_ray-string", {"use_ray": "maybe"}, {}, ["use_ray", "true or false"]),
    # step counts and other numbers out of range
    ("max_steps-negative", {"max_steps": -5}, {}, ["max_steps", "-1 to train for num_train_epochs"]),
    ("max_steps-zero", {"max_steps": 0}, {}, ["max_steps"]),
    ("save_steps-zero", {"save_steps": 0}, {}, ["save_steps", "> 0"]),
    ("logging_steps-negative", {"logging_steps": -3}, {}, ["logging_steps", "> 0"]),
    ("eval_steps-zero", {"eval_steps": 0, "val_size": 0.1, "eval_strategy": "steps"}, {}, ["eval_steps", "> 0"]),
    ("grad-accum-zero", {"gradient_accumulation_steps": 0}, {}, ["gradient_accumulation_steps", "> 0"]),
    ("eval-batch-zero", {"per_device_eval_batch_size": 0}, {}, ["per_device_eval_batch_size", "> 0"]),
    ("epochs-negative", {"num_train_epochs": -1}, {}, ["num_train_epochs", "> 0"]),
    ("learning_rate-negative", {"learning_rate": -1e-5}, {}, ["learning_rate", ">= 0"]),
    ("warmup_steps-negative", {"warmup_steps": -1}, {}, ["warmup_steps", ">= 0"]),
    ("lora_rank-zero", {"lora_rank": 0}, {}, ["lora_rank", ">= 1"]),
    ("lora_alpha-zero", {"lora_alpha": 0}, {}, ["lora_alpha", "> 0"]),
    ("lora_dropout-one", {"lora_dropout": 1.0}, {}, ["lora_dropout", "[0, 1)"]),
    ("max_samples-zero", {"max_samples": 0}, {}, ["max_samples", ">= 1"]),
    ("logps_chunk_size-zero", {"logps_chunk_size": 0}, {}, ["logps_chunk_size", ">= 1"]),
    ("pref_ftx-negative", {"pref_ftx": -1}, {}, ["pref_ftx", ">= 0"]),
    ("kto_rejected_weight", {"kto_rejected_weight": -1}, {}, ["kto_rejected_weight", "> 0"]),
    # impossible combinations
    ("kto-loss-in-dpo", {"pref_loss": "kto"}, {}, ["pref_loss", "'kto' is not a paired loss"]),
    ("val_size-and-eval_dataset", {"val_size": 0.1, "eval_dataset": "pairs"}, {}, ["val_size", "eval_dataset"]),
    ("best-model-without-eval", {"load_best_model_at_end": True}, {}, ["load_best_model_at_end"]),
    ("remote-code-unpinned", {"trust_remote_code": True}, {}, ["trust_remote_code", "model_revision", "'main'"]),
    ("remote-code-tag", {"trust_remote_code": True, "model_revision": "v1.0"}, {}, ["model_revision", "'v1.0'"]),
    ("remote-code-short-sha", {"trust_remote_code": True, "model_revision": SHA[:7]}, {}, ["model_revision"]),
    ("remote-code-sha-plus", {"trust_remote_code": True, "model_revision": SHA + "0"}, {}, ["model_revision"]),
    # missing and broken files
    ("deepspeed-missing", {"deepspeed": "/nonexistent/ds_z3.json"}, {}, ["deepspeed", "/nonexistent/ds_z3.json"]),
    ("deepspeed-number", {"deepspeed": 123}, {}, ["deepspeed", "123"]),
    ("deepspeed-json-list", {"deepspeed": "[1, 2]"}, {}, ["deepspeed", "[1, 2]"]),
    ("eval_dataset-unknown", {"eval_dataset": "dev"}, {}, ["dataset 'dev'", "dataset_info.json"]),
    ("dataset_dir-without-info", {}, {"dataset_info.json": None}, ["dataset_dir", "dataset_info.json"]),
    ("info-is-a-folder", {}, {"dataset_info.json": "DIR"}, ["dataset_info.json", "does not exist"]),
    ("info-not-utf8", {}, {"dataset_info.json": b'{"pairs": "\xff"}'}, ["dataset_info.json", "cannot be read"]),
    ("info-empty", {}, {"dataset_info.json": ""}, ["dataset_info.json", "cannot be read as JSON"]),
    ("info-list", {}, {"dataset_info.json": "[]"}, ["dataset_info.json", "JSON object"]),
    ("entry-string", {}, info(pairs="pairs.json"), ["dataset_info.json entry 'pairs'", "must be an object"]),
    ("entry-no-file_name", {}, info(pairs={"ranking": True}), ["entry 'pairs'", "has no file_name"]),
    ("entry-hub-uncached", {}, info(pairs={"hf_hub_url": "org/pairs"}), ["entry 'pairs'", "hf_hub_url",
                                                                          "hf download --repo-type dataset org/pairs"]),
    ("entry-modelscope-only", {}, info(pairs={"ms_hub_url": "org/pairs"}), ["entry 'pairs'", "ms_hub_url"]),
    ("dataset-trl-columns", {"dataset": "t.jsonl"}, {"t.jsonl": '{"q": 1}'}, ["dataset 't.jsonl'", "no TRL format"]),
    ("dataset-dir-remote-uncached", {"dataset_dir": "REMOTE:org/registry"}, {}, ["REMOTE:org/registry",
                                                                                 "hf download"]),
    ("file_name-missing", {}, info(pairs={**PAIRS, "file_name": "gone.json"}), ["file_name 'gone.json'", "not found"]),
    ("file_name-number", {}, info(pairs={**PAIRS, "file_name": 5}), ["entry 'pairs'", "file_name"]),
    ("file_name-empty", {}, info(pairs={**PAIRS, "file_name": ""}), ["entry 'pairs'", "file_name"]),
    (
        "file_name-txt",
        {},
        {**info(pairs={**PAIRS, "file_name": "pairs.txt"}), "pairs.txt": "hi"},
        ["entry 'pairs'", "pairs.txt", "'txt' is not supported"],
    ),
    (
        "file_name-empty-folder",
        {},
        {**info(pairs={**PAIRS, "file_name": "shards"}), "shards": "DIR"},
        ["entry 'pairs'", "shards", "holds no data files"],
    ),
    (
        "file_name-mixed-folder",
        {},
        {**info(pairs={**PAIRS, "file_name": "mix"}), "mix/a.json": "[]", "mix/b.csv": "a\n"},
        ["entry 'pairs'", "mix", "share one type"],
    ),
    ("formatting-unknown", {}, info(pairs={**PAIRS, "formatting": "openai"}), ["entry 'pairs'", "'openai'"]),
    ("ranking-string", {}, info(pairs={**PAIRS, "ranking": "yes"}), ["entry 'pairs'", "ranking"]),
    ("columns-list", {}, info(pairs={**PAIRS, "columns": ["chosen"]}), ["entry 'pairs'", "columns"]),
    ("columns-unknown", {}, info(pairs={**PAIRS, "columns": {"answer": "a"}}), ["entry 'pairs'", "'answer'"]),
    ("columns-number", {}, info(pairs={**PAIRS, "columns": {"chosen": 5}}), ["entry 'pairs'", "columns.chosen"]),
    ("tags-unknown", {}, info(pairs={**PAIRS, "tags": {"role": "from"}}), ["entry 'pairs'", "tags", "'role'"]),
    ("num_samples-negative", {}, info(pairs={**PAIRS, "num_samples": -3}), ["entry 'pairs'", "num_samples"]),
    ("num_samples-word", {}, info(pairs={**PAIRS, "num_samples": "ten"}), ["entry 'pairs'", "num_samples"]),
    ("entry-key-typo", {}, info(pairs={**PAIRS, "colums": {}}), ["entry 'pairs'", "'colums'"]),
]


def _write(data_dir: Path, files: dict[str, str | bytes | None]) -> None:
    for name, content in files.items():
        path = data_dir / name
        if content is None:
            path.unlink()
        elif content == "DIR":
            if path.is_file():
                path.unlink()
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)


def one_message(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    message = str(err.value)
    assert "\n" not in message.strip(), f"expected one line, got:\n{message}"
    assert "Traceback" not in message
    return message


def test_at_least_thirty_bad_configs():
    assert len(CONFIGS) >= 30
    assert len({case[0] for case in CONFIGS}) == len(CONFIGS)


@pytest.mark.parametrize(("changes", "files", "fragments"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_gives_one_message_naming_the_key_or_file(base, changes, files, fragments, monkeypatch,
                                                             tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # hub entries: an empty cache, offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write(Path(base["dataset_dir"]), files)
    message = one_message({**base, **changes})
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- stage: dpo\n", "must be a mapping of config keys"),
        (b"stage: dpo\nmodel_name_or_path: \xff\n", "not valid YAML"),
        ("stage: dpo\n\tpref_beta: 0.1\n", "not valid YAML"),
    ],
    ids=["list", "not-utf8", "tab-indent"],
)
def test_broken_yaml_file_is_named(tmp_path, text, fragment):
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    message = _file_message(path)
    assert "run.yaml" in message and fragment in message


def _file_message(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def test_yaml_file_errors_name_the_file_and_the_key(base, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**base, "ray": {"max_failures": "often"}}))
    message = _file_message(path)
    assert message.startswith(f"{path}: ") and "ray.max_failures" in message


# ---------------------------------------------------------------- trust_remote_code


def test_trust_remote_code_is_off_by_default(base):
    assert load_config(base).model.trust_remote_code is False


def test_trust_remote_code_with_a_pinned_commit_is_accepted(base):
    cfg = load_config({**base, "trust_remote_code": True, "model_revision": SHA})
    assert cfg.model.trust_remote_code is True and cfg.model.model_revision == SHA
    assert load_config({**base, "model_revision": "v1.0"}).model.model_revision == "v1.0"  # fine without remote code


def test_llama_factory_style_config_is_told_exactly_what_to_add(base):
    """LLaMA-Factory's example configs carry `trust_remote_code: true` and no revision."""
    message = one_message({**base, "trust_remote_code": True})
    assert "add `model_revision: <the full 40-character commit sha you reviewed>`" in message
    assert "or remove `trust_remote_code: true`" in message


# ---------------------------------------------------------------- sweep specs

spec_module = pytest.importorskip("sweeps.spec")


@pytest.fixture
def sweep_base(base) -> dict:
    return {**base, "val_size": 0.5, "eval_strategy": "steps", "eval_steps": 4}


SPACE = {"pref_beta": {"uniform": [0.05, 0.5]}}
# (id, spec changes, fragments); complements tests/test_sweep_spec.py
SPECS = [
    ("grid-empty", {"space": {"pref_loss": {"grid": []}}}, ["space.pref_loss.grid", "non-empty list"]),
    ("choice-empty", {"space": {"pref_beta": {"choice": []}}}, ["space.pref_beta.choice", "non-empty list"]),
    ("grid-not-a-list", {"space": {"pref_loss": {"grid": "sigmoid"}}}, ["space.pref_loss.grid", "'sigmoid'"]),
    ("grid-repeated", {"space": {"pref_loss": {"grid": ["ipo", "ipo"]}}}, ["space.pref_loss.grid", "repeated"]),
    ("unknown-loss-in-choice", {"space": {"pref_loss": {"choice": ["sigmoid", "dpoo"]}}}, ["pref_loss", "'dpoo'"]),
    ("beta-choice-negative", {"space": {"pref_beta": {"choice": [-0.1, 0.1]}}}, ["pref_beta must be > 0"]),
    ("loguniform-negative", {"space": {"pref_beta": {"loguniform": [-0.1, 1]}}}, ["space.pref_beta.loguniform"]),
    ("uniform-word", {"space": {"pref_beta": {"uniform": ["low", 1]}}}, ["space.pref_beta.uniform", "'low'"]),
    ("uniform-one-bound", {"space": {"pref_beta": {"uniform": [0.1]}}}, ["space.pref_beta.uniform", "[low, high]"]),
    ("randint-fraction", {"space": {"per_device_train_batch_size": {"randint": [1.5, 4]}}}, ["randint", "integers"]),
    ("two-kinds", {"space": {"pref_beta": {"choice": [0.1], "grid": [0.2]}}}, ["space.pref_beta", "exactly one"]),
    ("space-not-mapping", {"space": "pref_beta"}, ["space", "expected a mapping"]),
    ("by-itself", {"space": {"pref_beta": {"by": "pref_beta", "values": {"x": 0.1}}}}, ["space.pref_beta", "itself"]),
    ("by-no-values", {"space": {"pref_beta": {"by": "pref_loss", "values": []}}}, ["space.pref_beta.values"]),
    ("metric-unknown", {"metric": "accuracy"}, ["metric 'accuracy'", "not logged"]),
    ("num_samples-zero", {"num_samples": 0}, ["num_samples", ">= 1"]),
    ("num_samples-word", {"num_samples": "two"}, ["num_samples", "'two'"]),
    ("concurrency-zero", {"max_concurrent_trials": 0}, ["max_concurrent_trials"]),
    ("base-missing", {"base": None}, ["base: required"]),
    ("base-number", {"base": 42}, ["base", "42"]),
    ("base-file-missing", {"base": "/nonexistent/base.yaml"}, ["/nonexistent/base.yaml", "does not exist"]),
    ("base-bad-key", {"base": "BASE+pref_bta"}, ["pref_bta", "did you mean 'pref_beta'"]),
    ("overrides-string", {"overrides": "max_steps=3"}, ["overrides", "mapping"]),
    ("override-bad-value", {"overrides": {"max_steps": -3}}, ["max_steps"]),
    ("trial_resources-string", {"trial_resources": "4 cpus"}, ["trial_resources", "mapping"]),
    ("trial_resources-zero-workers", {"trial_resources": {"num_workers": 0}}, ["ray.num_workers", ">= 1"]),
    ("scheduler-unknown", {"scheduler": {"type": "hyperband"}}, ["scheduler.type", "'hyperband'"]),
    ("scheduler-factor", {"scheduler": {"type": "asha", "reduction_factor": 1}}, ["scheduler.reduction_factor"]),
    ("name-with-slash", {"name": "my sweep/1"}, ["name", "'my sweep/1'"]),
    ("tiny_model-number", {"tiny_model": 3}, ["tiny_model", "folder path", "3"]),
]


def test_at_least_ten_bad_sweep_specs():
    assert len(SPECS) >= 10


@pytest.mark.parametrize(("changes", "fragments"), [s[1:] for s in SPECS], ids=[s[0] for s in SPECS])
def test_bad_sweep_spec_gives_one_message_naming_the_key_or_file(sweep_base, changes, fragments):
    spec = {"base": sweep_base, "space": SPACE, **changes}
    if spec["base"] is None:
        del spec["base"]
    elif spec["base"] == "BASE+pref_bta":
        spec["base"] = {**sweep_base, "pref_bta": 0.1}
    with pytest.raises(ConfigError) as err:
        spec_module.load_sweep(spec)
    message = str(err.value)
    assert "\n" not in message.strip(), f"expected one line, got:\n{message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_bad_sweep_file_is_named(sweep_base, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": sweep_base, "space": SPACE, "num_samples": -1}))
    with pytest.raises(ConfigError) as err:
        spec_module.load_sweep(path)
    assert str(err.value).startswith(f"{path}: num_samples")
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="sweep.yaml: must be a mapping"):
        spec_module.load_sweep(path)
