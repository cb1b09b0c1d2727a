"""Every YAML the repository ships parses as a user runs it: the training configs in `configs/` with
`load_config`, the sweep specs in `sweeps/` with `load_sweep` (which also validates every corner of the
search space as a training config). Each key a file sets must come back in the typed config with the
value written there, so a shipped file never silently loses a key to a rename or a default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.spec import load_sweep
from trainer.config import LEGACY_FLAGS, LEGACY_KEYS, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))


def test_the_shipped_files_are_found():
    # the shipped set (README): two training configs, four sweep specs
    assert [p.name for p in CONFIGS] == ["llama3_lora_dpo.yaml", "tiny_dpo.yaml"]
    assert [p.name for p in SPECS] == ["demo.yaml", "ftx.yaml", "losses.yaml", "simpo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses_and_keeps_every_key(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative dataset_dir, as a user runs it from the checkout
    written = yaml.safe_load(path.read_text())
    cfg = load_config(path.relative_to(REPO))
    flat = cfg.to_flat_dict()
    for key, value in written.items():
        if key in LEGACY_KEYS or key in LEGACY_FLAGS:
            continue  # mapped to their transformers 5 names
        got = flat[key]
        if isinstance(value, float) or isinstance(got, float):
            assert got == pytest.approx(float(value)), key
        else:
            assert str(got) == str(value) if value is not None else got is None, key
    if "warmup_ratio" in written:  # transformers 5: warmup_steps below 1 is the ratio
        assert flat["warmup_steps"] == pytest.approx(written["warmup_ratio"])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_sweep_spec_parses_and_keeps_its_space(path, monkeypatch):
    monkeypatch.chdir(REPO)  # `base: configs/...` is relative to the working dir
    written = yaml.safe_load(path.read_text())
    spec = load_sweep(path.relative_to(REPO))
    assert spec.name == written.get("name", path.stem)
    assert sorted(spec.space) == sorted(written["space"])
    for key, value in (written.get("overrides") or {}).items():
        assert spec.base[key] == value, key
    assert spec.metric == written.get("metric", "eval_rewards/accuracies")
