"""A Ray driver checks a config without PEFT and transformers' model code (`trainer.config.driver_checks`), and
reaches the same verdicts as the full checks: the same parsed config, the same `TrainingArguments`, the same
error lines.

Each mode runs in a process of its own (what is imported is per process): `plain` is `prepare_config` as
an in-process run calls it, `driver` is what `prefsweep train` runs on its validation thread when the run
goes through Ray.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.script_output import tagged_json

CHECK = r"""
import importlib.util, json, sys
from rayjobs.train import _prepare_in_driver, prepare_config
from trainer.errors import ConfigError

mode, cases = sys.argv[1], json.loads(sys.argv[2])
results = []
for config, overrides in cases:
    try:
        if mode == "driver":
            from trainer.config.driver_checks import for_a_driver
            cfg = _prepare_in_driver(config, overrides)
            with for_a_driver():
                args = cfg.training_arguments(device_independent=True).to_dict()
        else:
            cfg = prepare_config(config, overrides)
            args = cfg.training_arguments(device_independent=True).to_dict()
        results.append({"config": cfg.to_flat_dict(), "training_arguments": args})
    except ConfigError as err:
        results.append({"error": str(err)})
loaded = {name: sys.modules.get(name) is not None for name in ("peft", "transformers.modeling_utils")}
from transformers.utils import is_peft_available
print("RESULT " + json.dumps({"results": results, "loaded": loaded, "peft_found_after": importlib.util.find_spec("peft") is not None,
                              "peft_available_after": is_peft_available()}, default=str))
"""


def _check(mode: str, cases: list, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    run = subprocess.run([sys.executable, "-c", CHECK, mode, json.dumps(cases)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return tagged_json(run.stdout)


@pytest.fixture(scope="module")
def cases(tiny, tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("driver_checks")
    model, data = str(tiny["model"]), str(tiny["data"])
    tiny_dpo = [f"model_name_or_path={model}", f"output_dir={out / 'a'}"]
    return [
        # the shipped configs, pointed at the tiny model
        ["configs/tiny_dpo.yaml", tiny_dpo],
        ["configs/llama3_lora_dpo.yaml", [f"model_name_or_path={model}", "template=default", f"dataset_dir={data}",
                                          "dataset=pairs", f"output_dir={out / 'b'}"]],
        # errors TrainingArguments finds (a strategy mismatch; an unknown scheduler) and the parse finds
        ["configs/tiny_dpo.yaml", [*tiny_dpo, "load_best_model_at_end=true"]],
        ["configs/tiny_dpo.yaml", [*tiny_dpo, "lr_scheduler_type=cosinus"]],
        ["configs/tiny_dpo.yaml", [*tiny_dpo, "learning_rat=0.1"]],
        ["configs/tiny_dpo.yaml", [*tiny_dpo, "save_strategy=steps", "save_steps=3", "eval_steps=2",
                                   "load_best_model_at_end=true"]],
    ]


def test_a_driver_checks_without_peft_or_model_code_and_reaches_the_same_verdicts(cases):
    plain, driver = _check("plain", cases), _check("driver", cases)
    assert driver["results"] == plain["results"]
    # two configs pass, four are refused, each with the line that names its key
    errors = [r["error"] for r in plain["results"] if "error" in r]
    assert [("error" in r) for r in plain["results"]] == [False, False, True, True, True, True]
    assert "load_best_model_at_end" in errors[0] and "cosinus" in errors[1] and "'learning_rat'" in errors[2]
    assert "learning_rate" in errors[2]  # the nearest valid key
    # what the driver's checks kept out of its process; the in-process checks import both
    assert plain["loaded"] == {"peft": True, "transformers.modeling_utils": True}
    assert driver["loaded"] == {"peft": False, "transformers.modeling_utils": False}
    # and PEFT is findable again once the checks are done
    assert driver["peft_found_after"] and driver["peft_available_after"]


def test_the_kubeflow_answer_is_transformers_own_under_each_setting(monkeypatch):
    from transformers.integrations.integration_utils import is_kubeflow_available

    from trainer.config.driver_checks import kubeflow_available

    answers = []
    for url in (None, "http://127.0.0.1:1"):
        for disable in (None, "true", "TRUE", "false"):
            for key, value in (("KUBEFLOW_TRAINER_SERVER_URL", url), ("DISABLE_KUBEFLOW_INTEGRATION", disable)):
                if value is None:
                    monkeypatch.delenv(key, raising=False)
                else:
                    monkeypatch.setenv(key, value)
            assert kubeflow_available() == is_kubeflow_available(), (url, disable)
            answers.append(kubeflow_available())
    assert answers == [False] * 4 + [True, False, False, True]


def test_a_kubeflow_job_driver_builds_the_same_training_arguments(tiny, tmp_path):
    case = [["configs/tiny_dpo.yaml", [f"model_name_or_path={tiny['model']}", f"output_dir={tmp_path / 'a'}"]]]
    env = {"KUBEFLOW_TRAINER_SERVER_URL": "http://127.0.0.1:1"}
    plain, driver = _check("plain", case, env), _check("driver", case, env)
    assert driver["results"] == plain["results"]
    assert "kubeflow" in plain["results"][0]["training_arguments"]["report_to"]


DRIVER = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print('DRIVER ' + json.dumps({m: sys.modules.get(m) is not None\n"
    "    for m in ('peft', 'transformers.modeling_utils', 'torch')})))\n"
    "from rayjobs.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_the_readmes_train_command_on_its_own_ray_keeps_model_code_out_of_the_driver(tiny, tmp_path):
    """`prefsweep train configs/tiny_dpo.yaml` as the README has it (a relative path; no `use_cpu`, so the driver
    validates a second time when it adds it for CPU workers): the driver imports neither, the worker trains."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # the private Ray of a laptop
    run = subprocess.run([sys.executable, "-c", DRIVER, "train", "configs/tiny_dpo.yaml",
                          f"model_name_or_path={tiny['model']}", f"output_dir={out}", "max_samples=8", "max_steps=1",
                          "--no-mlflow"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert tagged_json(run.stdout, "DRIVER ") == {"peft": False, "transformers.modeling_utils": False, "torch": True}
    # the worker trained: one step from the reference's own weights, so the DPO loss is -log sigmoid(0) = log 2
    results = json.loads((out / "all_results.json").read_text())
    assert math.isclose(results["train_loss"], math.log(2), abs_tol=1e-4)


NEEDS_PEFT = r"""
import importlib, json, sys
from trainer.config.driver_checks import as_a_driver, for_a_driver

tries = []

def needs_peft():
    tries.append(sys.modules.get("peft", "absent") is None)
    return importlib.import_module("peft").__name__

try:
    with for_a_driver():
        importlib.import_module("peft")
    inside = "imported"
except ImportError:
    inside = "ImportError"
print("RESULT " + json.dumps({"inside": inside, "result": as_a_driver(needs_peft), "hidden_per_try": tries,
                              "after": sys.modules.get("peft") is not None}))
"""


def test_a_check_that_needs_peft_runs_again_with_it_rather_than_fail():
    """A transformers release that imports PEFT unconditionally would fail inside `for_a_driver`: `as_a_driver`
    then runs the same check without it. In a fresh process, where PEFT is not imported yet."""
    run = subprocess.run([sys.executable, "-c", NEEDS_PEFT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert tagged_json(run.stdout) == {"inside": "ImportError", "result": "peft", "hidden_per_try": [True, False], "after": True}
