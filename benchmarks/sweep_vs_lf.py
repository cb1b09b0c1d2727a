"""A whole 8-trial LoRA sweep as one `prefsweep sweep`, against the same 8 configs run one after another
with LLaMA-Factory 0.9.5 and with TRL 1.16 (the way users sweep without prefsweep: a shell loop).

    python -m benchmarks.sweep_vs_lf [--rounds 1] [--quick] [--peers prefsweep,llamafactory,trl]
    python -m benchmarks.sweep_vs_lf --report benchmarks/results/sweep_vs_lf.json

Trials: `sigmoid` and `simpo` x 4 betas each (`BETAS`), LoRA rank 8 on every linear layer, the first 64
pairs of `data/dpo_en_demo.json` (template `default`, cutoff_len 512), batch 4, one epoch = 16 steps,
loss logged every 2 steps, no evaluation, the adapter saved at the end. Model: a random Llama of 6
layers x hidden 512 (`MODEL`, built offline with `trainer.tiny_model` as `benchmarks.step_throughput`
builds its model), float32.

- `prefsweep`: `python -m rayjobs.sweep SPEC.yaml` in a subprocess, what `prefsweep sweep` runs: a fresh
  local Ray, the shared reference cache built by the driver (sigmoid trials read it; SimPO has no
  reference), MLflow into a SQLite store of its own, one-worker trials of `--trial-cpus` CPUs, as many at
  once as the sweep picks. Wall: process start to exit, everything counted.
- `llamafactory`: `../shared/tools/lf-peer CONFIG.yaml` once per trial, one after another (the YAML is the
  sweep's base config with the trial's loss and beta; LF's own defaults otherwise: gradient checkpointing
  on, all cores). Wall: the sum of the 8 processes' walls.
- `trl`: `python -m benchmarks._trl_run CONFIG.json` once per trial (`DPOTrainer` / `CPOTrainer` simpo,
  peft LoRA, TRL tokenizing the template-rendered text itself).

Variants alternate within each round (prefsweep, llamafactory, trl; the order rotates each round).
Per run the summary has the wall, each trial's time in its training loop (`train_runtime`) and outside
it, and for the sweep the seconds before its first trial started. Ratios: peer wall / prefsweep wall.
Writes `benchmarks/results/sweep_vs_lf.json` (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import check_launched, launch, median, results_header, write_json
from benchmarks._sweep_outputs import sweep_outputs

REPO = Path(__file__).resolve().parents[1]
LF_PEER = REPO.parent / "shared" / "tools" / "lf-peer"
PEERS = ("prefsweep", "llamafactory", "trl")
TARGET = 1.5  # issue 19: LF loop wall / prefsweep sweep wall
BETAS = {"sigmoid": [0.05, 0.1, 0.2, 0.5], "simpo": [2.0, 2.5, 5.0, 10.0]}
MODEL = {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6,
         "num_attention_heads": 8, "num_key_value_heads": 4}
QUICK_MODEL = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2}


def base_config(args, model_dir: Path, out: Path) -> dict:
    """The LLaMA-Factory YAML every peer runs (the sweep, and each loop run with its loss and beta)."""
    return {
        "model_name_or_path": str(model_dir), "stage": "dpo", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all",
        "pref_loss": "sigmoid", "pref_beta": 0.1,
        "dataset": "dpo_en_demo", "dataset_dir": str(REPO / "data"), "template": "default",
        "cutoff_len": args.cutoff_len, "max_samples": args.max_samples,
        "output_dir": str(out), "logging_steps": 2, "save_strategy": "no", "plot_loss": False,
        "overwrite_output_dir": True, "report_to": "none",
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5.0e-5,
        "num_train_epochs": 1.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "seed": 42,
    }


def trials() -> list[tuple[str, float]]:
    return [(loss, beta) for loss, betas in BETAS.items() for beta in betas]


def sweep_spec(args, model_dir: Path, run_dir: Path, name: str) -> dict:
    spec = {
        "name": name,
        "description": "benchmarks.sweep_vs_lf: sigmoid and simpo x 4 betas, LoRA",
        "base": base_config(args, model_dir, run_dir / "outputs"),
        "space": {"pref_loss": {"grid": list(BETAS)},
                  "pref_beta": {"by": "pref_loss", "values": {k: {"grid": v} for k, v in BETAS.items()}}},
        "metric": "rewards/accuracies", "mode": "max", "search": "grid", "scheduler": "none",
        "storage_path": str(run_dir / "ray_results"),
        "trial_resources": {"num_workers": 1, "resources_per_worker": {"CPU": args.trial_cpus}},
    }
    if args.max_concurrent_trials:
        spec["max_concurrent_trials"] = args.max_concurrent_trials
    return spec


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return env


def run_prefsweep(args, model_dir: Path, run_dir: Path, round_: int) -> dict:
    name = f"sweep_vs_lf_r{round_}"
    spec_path = run_dir / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(sweep_spec(args, model_dir, run_dir, name), sort_keys=False))
    env = {**base_env(), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'mlflow.db'}",
           "MLFLOW_EXPERIMENT_NAME": "sweep_vs_lf", "PREFSWEEP_PHASES": str(run_dir / "marks.txt")}
    t0 = time.time()
    run = launch([sys.executable, "-m", "rayjobs.sweep", str(spec_path)], cwd=run_dir, env=env,
                 timeout=args.run_timeout, log_path=run_dir / "driver.log")
    check_launched(run, f"prefsweep sweep round {round_}", run_dir / "driver.log")
    out = sweep_outputs(run, run_dir, run_dir / "ray_results" / name)
    for record in out["trials"].values():
        loop = (record.get("metrics") or {}).get("train_runtime")
        total = record.get("tune_time_total_s")
        record["outside_loop_s"] = total - loop if loop is not None and total is not None else None
    return {"wall_seconds": out["wall_seconds"], "load_average_1min_before": out["load_average_1min_before"],
            "before_first_trial_s": out["timeline"]["first_trial_started"],
            "phases": marks_by_process(run_dir / "marks.txt", t0), **out}


WORKER_PHASES = ("worker_start", "tokenizer_loaded", "data_ready", "model_loaded", "first_step_begin", "train_end",
                 "saved", "run_end")


def marks_by_process(path: Path, t0: float) -> dict:
    """`trainer.phases` marks: the driver's (seconds since its start) and each Ray Train worker's phases
    (seconds from one mark to the next, from `worker_start` on)."""
    processes: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, when, pid = line.split()
        processes.setdefault(pid, {}).setdefault(name, float(when) - t0)
    driver = next((m for m in processes.values() if "sweep_ray_ready" in m), {})
    workers = []
    for marks in processes.values():
        if "worker_start" in marks and all(k in marks for k in WORKER_PHASES):
            times = [marks[k] for k in WORKER_PHASES]
            workers.append({f"{a}->{b}": t2 - t1 for a, b, t1, t2 in
                            zip(WORKER_PHASES, WORKER_PHASES[1:], times, times[1:])} | {"start": marks["worker_start"]})
    return {"driver": driver, "workers": workers}


def loop_run(args, peer: str, cmd: list[str], run_dir: Path, index: int, env: dict) -> dict:
    log = run_dir / f"run{index}.log"
    run = launch(cmd, cwd=run_dir, env=env, timeout=args.run_timeout, log_path=log)
    check_launched(run, f"{peer} run {index}", log)
    out = run_dir / f"out{index}"
    results = out / "all_results.json"
    metrics = json.loads(results.read_text()) if results.is_file() else {}
    trl = [json.loads(line.split(" ", 1)[1]) for _, line in run.lines if line.startswith("TRL_RESULT ")]
    if trl:
        metrics = trl[-1]
    loop = metrics.get("train_runtime")
    return {"wall_seconds": run.wall_seconds, "cpu_seconds": run.cpu_seconds,
            "load_average_1min_before": run.load_average_1min_before, "train_runtime": loop,
            "outside_loop_s": run.wall_seconds - loop if loop is not None else None,
            "train_loss": metrics.get("train_loss"), "phases": trl[-1] if trl else None,
            "adapter_saved": (out / "adapter_model.safetensors").is_file()}


def run_loop(args, peer: str, model_dir: Path, run_dir: Path, rows_file: Path) -> dict:
    runs = []
    env = base_env()
    for index, (loss, beta) in enumerate(trials()):
        config = {**base_config(args, model_dir, run_dir / f"out{index}"), "pref_loss": loss, "pref_beta": beta}
        if peer == "llamafactory":
            path = run_dir / f"config{index}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            cmd = [str(LF_PEER), str(path)]
        else:
            path = run_dir / f"config{index}.json"
            path.write_text(json.dumps({**config, "rows_file": str(rows_file),
                                        "gradient_checkpointing": args.trl_gradient_checkpointing}))
            cmd = [sys.executable, "-m", "benchmarks._trl_run", str(path)]
            env = {**env, "PYTHONPATH": str(REPO)}
        runs.append({"loss": loss, "beta": beta, **loop_run(args, peer, cmd, run_dir, index, env)})
        print(f"  {peer} {loss} beta {beta}: {runs[-1]['wall_seconds']:.1f}s "
              f"(loop {runs[-1]['train_runtime']}s)", flush=True)
    wall = sum(r["wall_seconds"] for r in runs)
    return {"wall_seconds": wall, "load_average_1min_before": runs[0]["load_average_1min_before"], "runs": runs}


def write_trl_rows(args, model_dir: Path, scratch: Path) -> Path:
    """The sweep's pairs as TRL text rows: prefsweep's LLaMA-Factory-exact ids split at the prompt, decoded."""
    from transformers import AutoTokenizer

    from benchmarks.step_throughput import write_pairs

    ids_file = scratch / "pairs_ids.json"
    write_pairs({"config": base_config(args, model_dir, scratch / "tokenize")}, ids_file)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [{key: tokenizer.decode(row[f"{key}_ids"]) for key in ("prompt", "chosen", "rejected")}
            for row in json.loads(ids_file.read_text())]
    path = scratch / "trl_rows.json"
    path.write_text(json.dumps(rows))
    return path


def summarize(runs: dict[str, list[dict]]) -> dict:
    walls = {peer: [r["wall_seconds"] for r in rs] for peer, rs in runs.items()}
    summary: dict = {"wall_seconds_median": {p: median(w) for p, w in walls.items()}}
    if "prefsweep" in runs:
        ours = walls["prefsweep"]
        summary["ratio_peer_over_prefsweep"] = {
            p: {"per_round": [a / b for a, b in zip(w, ours)], "median": median([a / b for a, b in zip(w, ours)])}
            for p, w in walls.items() if p != "prefsweep"}
        sweeps = runs["prefsweep"]
        trial_records = [t for r in sweeps for t in r["trials"].values()]
        summary["prefsweep"] = {
            "before_first_trial_s": median([r["before_first_trial_s"] or 0.0 for r in sweeps]),
            "trial_train_runtime_s": median([t["metrics"]["train_runtime"] for t in trial_records]),
            "trial_outside_loop_s": median([t["outside_loop_s"] for t in trial_records if t.get("outside_loop_s")]),
            "concurrent_trials": sweeps[0].get("concurrent_trials"),
            "driver_marks": sweeps[0]["phases"]["driver"],
        }
        workers = [w for r in sweeps for w in r["phases"]["workers"]]
        if workers:
            summary["prefsweep"]["worker_phases_median_s"] = {k: median([w[k] for w in workers])
                                                              for k in workers[0] if k != "start"}
    for peer in ("llamafactory", "trl"):
        if peer in runs:
            each = [x for r in runs[peer] for x in r["runs"]]
            summary[peer] = {"run_train_runtime_s": median([x["train_runtime"] for x in each]),
                             "run_outside_loop_s": median([x["outside_loop_s"] for x in each])}
    return summary


def check(runs: dict[str, list[dict]], steps: int) -> list[str]:
    problems = []
    for r in runs.get("prefsweep", []):
        done = [t for t in r["trials"].values() if t.get("complete")]
        if len(done) != len(trials()):
            problems.append(f"sweep: {len(done)} of {len(trials())} trials complete")
        problems += [f"sweep {n}: {t.get('steps')} steps" for n, t in r["trials"].items() if t.get("steps") != steps]
    for peer in ("llamafactory", "trl"):
        for r in runs.get(peer, []):
            problems += [f"{peer} {x['loss']} {x['beta']}: no adapter saved" for x in r["runs"] if not x["adapter_saved"]
                         and peer == "llamafactory"]
    return problems


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 1) if isinstance(value, float) else value


def print_summary(summary: dict, problems: list[str]) -> None:
    print("\nwall (median over rounds):", {k: round(v, 1) for k, v in summary["wall_seconds_median"].items()})
    for peer, ratio in summary.get("ratio_peer_over_prefsweep", {}).items():
        per_round = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
        print(f"  {peer} / prefsweep: {ratio['median']:.2f}x ({per_round})")
    for key in ("prefsweep", "llamafactory", "trl"):
        if key in summary:
            print(f"  {key}: " + ", ".join(f"{k} {_rounded(v)}" for k, v in summary[key].items()))
    if "llamafactory" in summary.get("ratio_peer_over_prefsweep", {}):
        met = summary["ratio_peer_over_prefsweep"]["llamafactory"]["median"] >= TARGET
        print(f"target LF loop / prefsweep >= {TARGET}x: {'met' if met else 'MISSED'}")
    for problem in problems:
        print(f"problem: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {PEERS}")
    parser.add_argument("--quick", action="store_true", help="a 2-layer 64-wide model, 16 pairs (4 steps)")
    parser.add_argument("--max-samples", type=int, default=64)
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--trial-cpus", type=float, default=1)
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL's own default (on); off by default here, as prefsweep")
    parser.add_argument("--run-timeout", type=int, default=1800)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", metavar="JSON")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        steps = saved["setup"]["base_config"]["max_samples"] // 4
        print_summary(summarize(saved["runs"]), check(saved["runs"], steps))
        return 0
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if unknown := [p for p in peers if p not in PEERS]:  # an unknown name would run as the TRL loop
        parser.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    model_shape = QUICK_MODEL if args.quick else MODEL
    if args.quick:
        args.max_samples, args.cutoff_len = 16, 256
    out_json = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "sweep_vs_lf_quick.json" if args.quick else "sweep_vs_lf.json")
    from trainer.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="sweep-vs-lf-", dir="/tmp"))
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    try:
        model_dir = build_tiny_model(root / "model", [REPO / "data" / "dpo_en_demo.json"], seed=0,
                                     max_position_embeddings=2048, **model_shape)
        rows_file = write_trl_rows(args, model_dir, root) if "trl" in peers else root / "none"
        for round_ in range(args.rounds):
            order = peers[round_ % len(peers):] + peers[:round_ % len(peers)]
            for peer in order:
                run_dir = root / f"{peer}-r{round_}"
                run_dir.mkdir()
                print(f"round {round_ + 1}/{args.rounds} {peer} (load {os.getloadavg()[0]:.1f})", flush=True)
                if peer == "prefsweep":
                    result = run_prefsweep(args, model_dir, run_dir, round_)
                else:
                    result = run_loop(args, peer, model_dir, run_dir, rows_file)
                runs[peer].append({"round": round_, **result})
                # what is measured so far survives a stopped run (the full file is written at the end)
                write_json(out_json.with_name(out_json.name + ".partial"), {"runs": runs})
                print(f"round {round_ + 1}/{args.rounds} {peer}: {result['wall_seconds']:.1f}s", flush=True)
                if not args.keep:
                    shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"run dirs kept under {root}")
    summary = summarize(runs)
    problems = check(runs, args.max_samples // 4)
    print_summary(summary, problems)
    write_json(out_json, {
        **results_header("benchmarks.sweep_vs_lf", argv if argv is not None else sys.argv[1:], "cpu", REPO,
                         dirs=("trainer", "rayjobs"), packages=("torch", "transformers", "ray", "mlflow", "trl")),
        "setup": {"model": {"architecture": "LlamaForCausalLM", **model_shape, "dtype": "float32"},
                  "betas": BETAS, "base_config": base_config(args, Path("<model>"), Path("<out>")),
                  "rounds": args.rounds, "quick": args.quick, "trial_cpus": args.trial_cpus},
        "target_lf_over_prefsweep": TARGET, "summary": summary, "problems": problems, "runs": runs,
    })
    print(f"\nwrote {out_json}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
