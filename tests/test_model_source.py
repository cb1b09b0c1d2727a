"""Models by local path or hub id (through a pre-filled offline hub cache), one-line errors before any trial,
and trust_remote_code accepted with one warning for checkpoints that ship no code."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from rayjobs import sweep, train
from trainer.config import ModelArguments, load_config
from trainer.errors import ConfigError
from trainer.model_source import check_models, resolve_model, trust_remote_code
from trainer.models import load_causal_lm, load_tokenizer

SHA = "3" * 40


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def cache_model(home: Path, repo_id: str, source: Path) -> Path:
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    return Path(shutil.copytree(source, repo / "snapshots" / SHA))


def test_hub_id_loads_from_the_offline_cache_as_the_local_folder_does(tiny_model, hf_home):
    cache_model(hf_home, "org/tiny", tiny_model)
    hub_args, local_args = ModelArguments("org/tiny"), ModelArguments(str(tiny_model))
    assert load_tokenizer(hub_args)("Hello there").input_ids == load_tokenizer(local_args)("Hello there").input_ids
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        hub_logits = load_causal_lm("org/tiny", hub_args, torch.float32)(ids).logits
        local_logits = load_causal_lm(str(tiny_model), local_args, torch.float32)(ids).logits
    torch.testing.assert_close(hub_logits, local_logits, rtol=0, atol=0)


def one_line(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_models_are_one_line(hf_home, tmp_path, monkeypatch):
    assert "/nonexistent/model does not exist" in one_line(resolve_model, "/nonexistent/model")
    message = one_line(check_models, ModelArguments("Qwen/Qwen3-0.6B"))
    assert "'Qwen/Qwen3-0.6B'" in message and "HF_HUB_OFFLINE is set" in message
    assert "`hf download Qwen/Qwen3-0.6B`" in message
    message = one_line(check_models, ModelArguments(model_name_or_path=str(tmp_path), ref_model="/no/ref"))
    assert message.startswith("ref_model: /no/ref does not exist")
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)  # models/ exists: models/typo is a path, not a hub id
    assert one_line(resolve_model, "models/typo").startswith("model_name_or_path: models/typo does not exist")


def test_train_and_sweep_drivers_stop_in_one_line_before_ray(tmp_path, data_dir, capsys):
    import ray

    config = {"model_name_or_path": "/nonexistent/model", "dataset": "pairs", "dataset_dir": str(data_dir),
              "output_dir": str(tmp_path / "out"), "template": "default"}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    assert train.main([str(path), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "prefsweep train: model_name_or_path: /nonexistent/model does not exist (not a local model " \
                  "folder, and not a hub id of the form owner/name)"
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": str(path), "space": {"pref_beta": {"grid": [0.1, 0.2]}},
                                "metric": "loss", "mode": "min"}))
    assert sweep.main([str(spec)]) == 2
    assert capsys.readouterr().err.strip().startswith("prefsweep sweep: model_name_or_path: /nonexistent/model")
    assert not ray.is_initialized()


def with_auto_map(tiny_model: Path, tmp_path: Path) -> Path:
    model = Path(shutil.copytree(tiny_model, tmp_path / "coded"))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_trust_remote_code_without_shipped_code_loads_natively_with_one_warning(tiny_model, tmp_path, data_dir,
                                                                                 caplog):
    model = Path(shutil.copytree(tiny_model, tmp_path / "native"))
    raw = {"model_name_or_path": str(model), "trust_remote_code": True, "dataset": "pairs",
           "dataset_dir": str(data_dir), "output_dir": str(tmp_path / "out")}
    with caplog.at_level(logging.WARNING, logger="trainer.model_source"):
        cfg = load_config(raw)
        load_config(raw)
        check_models(cfg.model)
    warnings = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warnings) == 1 and "no auto_map" in warnings[0] and str(model) in warnings[0]
    assert trust_remote_code(model, cfg.model.trust_remote_code) is False  # what transformers is given


def test_trust_remote_code_for_shipped_code_needs_a_pinned_revision(tiny_model, tmp_path, data_dir):
    model = with_auto_map(tiny_model, tmp_path)
    raw = {"model_name_or_path": str(model), "trust_remote_code": True, "dataset": "pairs",
           "dataset_dir": str(data_dir), "output_dir": str(tmp_path / "out")}
    message = one_line(load_config, raw)
    assert "config.json has auto_map" in message and "model_revision is 'main'" in message
    cfg = load_config({**raw, "model_revision": SHA})
    assert trust_remote_code(model, cfg.model.trust_remote_code) is True
    assert trust_remote_code(model, False) is False  # never without the user's consent
