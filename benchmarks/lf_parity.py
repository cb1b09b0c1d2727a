"""First-step parity with LLaMA-Factory 0.9.5: same YAML, same data, same first-step metrics.

    python -m benchmarks.lf_parity [--lf-peer ../shared/tools/lf-peer] [--template default] [--loss sigmoid]

Builds the tiny model, writes one LLaMA-Factory-style config (one step, the whole 8-pair set in one
batch so data order cannot matter), runs it under `lf-peer` and in-process under prefsweep, and prints
the first logged `logps/chosen`, `logps/rejected`, `loss` and `grad_norm` of both with their relative
difference. Writes `benchmarks/results/lf_parity.json`. Not a test: it needs the LLaMA-Factory side env.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KEYS = ("loss", "logps/chosen", "logps/rejected", "logits/chosen", "rewards/margins", "grad_norm")


def write_inputs(root: Path, model: Path, template: str, loss: str, finetuning_type: str) -> dict:
    pairs = json.loads((REPO / "data" / "dpo_en_demo.json").read_text())[:8]
    (root / "pairs.json").write_text(json.dumps(pairs))
    info = {"pairs": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                      "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return {
        "model_name_or_path": str(model), "stage": "dpo", "do_train": True, "finetuning_type": finetuning_type,
        "pref_beta": 0.1, "pref_loss": loss, "dataset": "pairs", "dataset_dir": str(root), "template": template,
        "cutoff_len": 128, "overwrite_output_dir": True, "logging_steps": 1, "max_steps": 1,
        "per_device_train_batch_size": 8, "learning_rate": 1.0e-4, "report_to": "none", "save_strategy": "no",
        "seed": 42,
    }


def first_log(output_dir: Path) -> dict:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry for entry in history if "loss" in entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-peer", default=str(REPO.parent / "shared" / "tools" / "lf-peer"))
    parser.add_argument("--template", default="default")
    parser.add_argument("--loss", default="sigmoid")
    parser.add_argument("--finetuning-type", default="full")
    args = parser.parse_args(argv)

    from trainer.config import load_config
    from trainer.tiny_model import build_tiny_model
    from trainer.workflow import run_training

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", [REPO / "data" / "dpo_en_demo.json"], vocab_size=512, seed=0)
        raw = write_inputs(root, model, args.template, args.loss, args.finetuning_type)
        lf_config = root / "lf.yaml"
        lf_config.write_text(yaml.safe_dump({**raw, "output_dir": str(root / "lf")}))
        proc = subprocess.run([args.lf_peer, str(lf_config)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            return proc.returncode
        lf = first_log(root / "lf")
        run_training(load_config({**raw, "output_dir": str(root / "ours"), "use_ray": False}))
        ours = first_log(root / "ours")

    rows = []
    print(f"{'metric':<18}{'LLaMA-Factory':>24}{'prefsweep':>24}{'rel diff':>12}")
    for key in KEYS:
        a, b = lf.get(key), ours.get(key)
        rel = abs(a - b) / max(abs(a), 1e-12) if a is not None and b is not None else None
        rows.append({"metric": key, "llamafactory": a, "prefsweep": b, "rel_diff": rel})
        cells = [f"{v:.10g}" if v is not None else "-" for v in (a, b)]
        print(f"{key:<18}{cells[0]:>24}{cells[1]:>24}{f'{rel:.2e}' if rel is not None else '-':>12}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lf_parity.json").write_text(json.dumps({"template": args.template, "loss": args.loss, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
