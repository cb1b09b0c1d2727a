"""Start-up of one run: process start to the end of the first training step, phase by phase, `prefsweep train`
(in-process, `use_ray=false --no-mlflow`) against LLaMA-Factory 0.9.5 on the same YAML, alternated.

    python -m benchmarks.startup [--rounds 3] [--quick]

The YAML is `benchmarks.sweep_vs_lf`'s (LoRA rank 8, 6 x 512 random Llama, 64 demo pairs, cutoff 512)
with `max_steps: 2`. prefsweep's phases come from its marks (`PREFSWEEP_PHASES`, `trainer.phases`);
LLaMA-Factory's from the times its log lines appeared (the harness timestamps every output line):

| phase | prefsweep mark | LLaMA-Factory line |
|---|---|---|
| imports + config | config_parsed | its first `hparams.parser` line |
| tokenizer + data | data_ready | `loading weights file` |
| model (+ LoRA) | model_loaded | `trainable params` |
| Trainer built | first_step_begin | `***** Running training` |
| first step | first_step_end | the progress bar's `1/2` |
| second step | train_end | `Saving model checkpoint` |
| save + exit | process exit | process exit |

Writes `benchmarks/results/startup.json`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import check_launched, launch, median, results_header, write_json
from benchmarks.sweep_vs_lf import LF_PEER, MODEL, QUICK_MODEL, REPO, base_config

PHASES = ("imports_config", "tokenizer_data", "model", "trainer", "first_step", "second_step", "save_exit")
OURS = ("config_parsed", "data_ready", "model_loaded", "first_step_begin", "first_step_end", "train_end")
LF_LINES = (r"llamafactory\.hparams\.parser", r"loading weights file", r"trainable params",
            r"\*\*\*\*\* Running training", r"\|\s*1/2 \[", r"Saving model checkpoint")


def read_marks(path: Path, t0: float) -> dict[str, float]:
    marks: dict[str, float] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, when, _pid = line.split()
        marks.setdefault(name, float(when) - t0)
    return marks


def phases_from(ends: list[float | None], wall: float) -> dict[str, float | None]:
    """Phase lengths from the cumulative ends of all phases but the last, and the process's wall."""
    out, previous = {}, 0.0
    for name, end in zip(PHASES, [*ends, wall]):
        out[name] = None if end is None or previous is None else end - previous
        previous = end
    out["to_first_step"] = ends[4]
    out["wall"] = wall
    return out


def run_one(peer: str, config: Path, run_dir: Path, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    marks_file = run_dir / "marks.txt"
    if peer == "prefsweep":
        cmd = [sys.executable, "-m", "rayjobs.cli", "train", str(config), "use_ray=false", "--no-mlflow"]
        env.update({"PYTHONPATH": str(REPO), "PREFSWEEP_PHASES": str(marks_file)})
    else:
        cmd = [str(LF_PEER), str(config)]
    t0 = time.time()
    run = launch(cmd, cwd=run_dir, env=env, timeout=timeout, log_path=run_dir / f"{peer}.log")
    check_launched(run, peer, run_dir / f"{peer}.log")
    if peer == "prefsweep":
        marks = read_marks(marks_file, t0)
        ends = [marks.get(name) for name in OURS]
    else:
        ends = [next((t for t, line in run.lines if re.search(pattern, line)), None) for pattern in LF_LINES]
    return {"load_average_1min_before": run.load_average_1min_before, "cpu_seconds": run.cpu_seconds,
            **phases_from(ends, run.wall_seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the 2-layer 64-wide model")
    parser.add_argument("--run-timeout", type=int, default=900)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "startup.json"))
    args = parser.parse_args(argv)
    args.cutoff_len, args.max_samples = 512, 64
    from trainer.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="startup-", dir="/tmp"))
    runs: dict[str, list[dict]] = {"prefsweep": [], "llamafactory": []}
    try:
        model = build_tiny_model(root / "model", [REPO / "data" / "dpo_en_demo.json"], seed=0,
                                 max_position_embeddings=2048, **(QUICK_MODEL if args.quick else MODEL))
        for round_ in range(args.rounds):
            for peer in (("prefsweep", "llamafactory") if round_ % 2 == 0 else ("llamafactory", "prefsweep")):
                run_dir = root / f"{peer}-{round_}"
                run_dir.mkdir()
                config = run_dir / "run.yaml"
                config.write_text(yaml.safe_dump({**base_config(args, model, run_dir / "out"), "max_steps": 2}))
                result = run_one(peer, config, run_dir, args.run_timeout)
                runs[peer].append(result)
                print(f"round {round_ + 1} {peer:<13} to first step {result['to_first_step']:.1f}s, wall "
                      f"{result['wall']:.1f}s (load {result['load_average_1min_before']:.1f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = {peer: {k: median([r[k] for r in rs if r.get(k) is not None] or [float("nan")])
                    for k in (*PHASES, "to_first_step", "wall")} for peer, rs in runs.items()}
    print(f"\n{'phase (median s)':<22}{'prefsweep':>10}{'LF':>10}")
    for key in (*PHASES, "to_first_step", "wall"):
        print(f"{key:<22}{table['prefsweep'][key]:>10.2f}{table['llamafactory'][key]:>10.2f}")
    ratios = [a["to_first_step"] / b["to_first_step"] for a, b in zip(runs["prefsweep"], runs["llamafactory"])]
    print(f"prefsweep / LF to first step, per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    write_json(args.out, {
        **results_header("benchmarks.startup", argv if argv is not None else sys.argv[1:], "cpu", REPO,
                         dirs=("trainer", "rayjobs")),
        "table_median_s": table, "ratio_to_first_step_per_round": ratios, "runs": runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
