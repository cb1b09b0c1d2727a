"""`prefsweep train ... use_ray=false --no-mlflow` keeps Ray, MLflow and DeepSpeed out of its process: they
cost seconds of start-up (DeepSpeed, which accelerate imports whenever it is installed, also imports MLflow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import yaml

from tests.conftest import REPO

CHECK = (
    "import sys\n"
    "from rayjobs.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('IMPORTED', [m for m in ('ray', 'mlflow', 'deepspeed') if sys.modules.get(m) is not None])\n"
    "sys.exit(rc)\n"
)


def test_in_process_train_imports_neither_ray_nor_mlflow_nor_deepspeed(tiny, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny["model"]), "stage": "dpo", "do_train": True, "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "pairs", "dataset_dir": str(tiny["data"]), "template": "default", "cutoff_len": 64,
        "max_samples": 4, "per_device_train_batch_size": 2, "max_steps": 1, "pref_loss": "sigmoid",
        "output_dir": str(tmp_path / "out"), "report_to": "none", "save_strategy": "no", "use_ray": False,
    }))
    run = subprocess.run([sys.executable, "-c", CHECK, "train", str(config), "--no-mlflow"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "IMPORTED []" in run.stdout.splitlines(), run.stdout[-2000:]
    # it trained: one step of a fresh LoRA adapter, whose policy equals its reference, has loss log 2
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert math.isclose(results["train_loss"], math.log(2), abs_tol=1e-4)
