"""An 8-trial sweep over reference-based losses, with and without the shared reference log-prob cache:
whole-sweep wall time, and reference forwards executed (with the cache: exactly one per example).

    python -m benchmarks.sweep_cache [--rounds 2] [--device cpu|cuda] [--trial-cpus 1] [--quick]
    python -m benchmarks.sweep_cache --report benchmarks/results/sweep_cache.json

Each run is `python -m rayjobs.sweep SPEC.yaml` in a subprocess -- what users run: a fresh local Ray,
Ray Tune trials that are one-worker Ray Train runs, MLflow runs in a SQLite store of its own -- and its
wall time is subprocess start to exit. The two variants alternate A B A B over `--rounds` rounds, and
the target is the median of the per-round ratios `cache / no_cache`.

- `no_cache`: spec `reference_cache: false`, trials `precompute_ref: never`: every trial keeps a frozen
  reference copy that runs its forward on every training and evaluation batch.
- `cache`: spec `reference_cache: true` (the default), trials `precompute_ref: auto`: the driver's
  `build_reference_caches` computes the reference log-probs of every train and eval example once, as a
  Ray task, before any trial starts (inside the timed sweep), and every trial reads them.

Every run gets fresh output, Ray storage, MLflow and cache directories (`ref_cache_dir` points into the
run's temp dir), so a `cache` run builds its cache and never finds one from an earlier round.

Sweep: `pref_loss` grid sigmoid, hinge, ipo, kto_pair (every paired loss that needs a reference) x two
betas each on that loss's scale (as `sweeps/losses.yaml`), grid search, no scheduler: 8 trials. Model: the
random tiny Llama of `benchmarks.step_throughput` (`trainer.tiny_model`, vocab 32000, hidden 256, 4
layers; float32, bf16 with `--device cuda`), built once before the rounds. Data: the first `max_samples`
pairs of `data/dpo_en_demo.json`, template `default`, cutoff_len 1024, a val_size split evaluated every
`eval_steps` and at the end, as a sweep ranked by `eval_rewards/accuracies` is run.

Concurrency: each trial is one Ray Train worker with `--trial-cpus` CPUs (default 1, as `sweeps/demo.yaml`
on this 2-core machine; Ray sets the worker's OMP_NUM_THREADS to its CPUs) and the sweep picks how many
run at once (cluster CPUs / per trial: 2 here). The cache build is one Ray task with one worker's
resources, before any trial. Both are measured as the sweep path does them, not tuned for the benchmark.
`trainings_at_once` in the summary (the trials' summed train_runtime over the trials' span) shows how many
trainings really overlapped: about 2 here since the trial drivers hold no CPU (before commit 0e14355 they
held 0.001, two trials needed 2.002 CPUs, and the trainings ran one after another on 2 cores).

Checks, per run: the sweep exited 0 with all 8 trials' output; both variants ran the same (loss, beta)
per trial name; with the cache every trial read it (`ref_cache.json` status hit, `run_reference_forwards`
0) and the driver's build forwarded each train and eval example exactly once (manifest
`reference_forwards` == examples, counted independently from the data before the rounds); without it,
each trial's reference forwards are reported (epochs x train + evaluations x eval). Final and logged
losses of each trial agree between the variants (max |difference| reported; target 1e-4).

Writes `benchmarks/results/sweep_cache.json` (`sweep_cache_cuda.json` on CUDA; `--out` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks._common import alternate, check_launched, launch, median, results_header, write_json
from benchmarks._sweep_outputs import COMPARED, sweep_outputs

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("no_cache", "cache")
TARGETS = {  # issue 4
    "wall_time_cache_over_no_cache": 0.80,
    "reference_forwards_per_example_with_cache": 1,
    "max_abs_metric_difference": 1e-4,
}
# Every paired loss that needs a reference (`trainer.losses`), two betas each on its own scale.
BETAS = {"sigmoid": [0.05, 0.1], "hinge": [0.05, 0.1], "ipo": [0.1, 0.5], "kto_pair": [0.05, 0.1]}
# The model of benchmarks.step_throughput's defaults.
MODEL = {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 4}
QUICK_MODEL = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2}


# ---- the sweep spec ----------------------------------------------------------------------------------


def base_config(args, model_dir: Path, run_dir: Path, variant: str) -> dict:
    """The training config every trial of a run starts from (the sweep sets pref_loss and pref_beta)."""
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "pref_loss": "sigmoid",
        "pref_beta": 0.1,
        "dataset": "dpo_en_demo",
        "dataset_dir": str(REPO / "data"),
        "template": "default",
        "cutoff_len": args.cutoff_len,
        "max_samples": args.max_samples,
        "val_size": args.val_size,
        "output_dir": str(run_dir / "outputs"),
        "logging_steps": args.logging_steps,
        "save_strategy": "no",
        "plot_loss": False,
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "num_train_epochs": float(args.epochs),
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "seed": 42,
        "per_device_eval_batch_size": args.eval_batch_size,
        "eval_strategy": "steps",
        "eval_steps": args.eval_steps,
        "precompute_ref": "auto" if variant == "cache" else "never",
        "ref_cache_dir": str(run_dir / "ref_cache"),
    }
    if args.device == "cuda":
        config["bf16"] = True
    return config


def sweep_spec(args, model_dir: Path, run_dir: Path, variant: str, round_: int) -> dict:
    resources = {"CPU": args.trial_cpus}
    if args.device == "cuda":
        resources["GPU"] = 1
    spec = {
        "name": f"sweep_cache_{variant}_r{round_}",
        "description": "benchmarks.sweep_cache: reference-based losses, two betas each",
        "base": base_config(args, model_dir, run_dir, variant),
        "space": {
            "pref_loss": {"grid": list(BETAS)},
            "pref_beta": {"by": "pref_loss", "values": {loss: {"grid": betas} for loss, betas in BETAS.items()}},
        },
        "metric": "eval_rewards/accuracies",
        "mode": "max",
        "search": "grid",
        "scheduler": "none",
        "storage_path": str(run_dir / "ray_results"),
        "reference_cache": variant == "cache",
        "trial_resources": {"num_workers": 1, "use_gpu": args.device == "cuda", "resources_per_worker": resources},
    }
    if args.max_concurrent_trials:
        spec["max_concurrent_trials"] = args.max_concurrent_trials
    return spec


def count_examples(args, model_dir: Path, scratch: Path) -> dict[str, int]:
    """Train and eval examples of the sweep's data, counted from the data itself (not from the cache)."""
    from trainer.config import load_config
    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    cfg = load_config({**base_config(args, model_dir, scratch, "no_cache"), "use_ray": False})
    targs = cfg.training_arguments()
    data = load_preference_data(cfg.data, load_tokenizer(cfg.model), stage="dpo", seed=targs.seed, do_train=True)
    return {"train": len(data.train), "eval": len(data.eval) if data.eval is not None else 0,
            "skipped": sum(data.skipped.values())}


def run_sweep(args, model_dir: Path, root: Path, variant: str, round_: int) -> dict:
    run_dir = root / f"{variant}-r{round_}"
    run_dir.mkdir()
    spec_path = run_dir / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(sweep_spec(args, model_dir, run_dir, variant, round_), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'mlflow.db'}",
                "MLFLOW_EXPERIMENT_NAME": "sweep_cache"})
    run = launch([sys.executable, "-m", "rayjobs.sweep", str(spec_path)], cwd=run_dir, env=env,
                 timeout=args.run_timeout, log_path=run_dir / "driver.log")
    check_launched(run, f"sweep {variant} round {round_}", run_dir / "driver.log")
    result = {"variant": variant, "round": round_,
              **sweep_outputs(run, run_dir, run_dir / "ray_results" / f"sweep_cache_{variant}_r{round_}")}
    if args.keep:
        result["run_dir"] = str(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


# ---- checks and summary ------------------------------------------------------------------------------


def reference_forwards(run: dict) -> dict:
    """Reference forwards of a run: the driver's cache build(s) plus every trial's `run_reference_forwards`."""
    build = sum(m["reference_forwards"] or 0 for m in run["cache_manifests"])
    trials = sum(t.get("run_reference_forwards") or 0 for t in run["trials"].values())
    return {"cache_build": build, "trials": trials, "total": build + trials}


def check_run(run: dict, examples: int, n_trials: int) -> list[str]:
    """Problems with one run: missing or incomplete trials; with the cache, anything but one build of
    exactly `examples` forwards read by every trial without a reference forward of its own."""
    problems = []
    trials = run["trials"]
    if len(trials) != n_trials:
        problems.append(f"{len(trials)} trial dirs, expected {n_trials}")
    problems += [f"{name} did not finish" for name, t in trials.items() if not t["complete"]]
    forwards = reference_forwards(run)
    if run["variant"] == "cache":
        if len(run["cache_manifests"]) != 1:
            problems.append(f"{len(run['cache_manifests'])} caches built, expected 1")
        if forwards["total"] != examples:
            problems.append(f"{forwards['total']} reference forwards with the cache, expected {examples} "
                            f"(build {forwards['cache_build']}, trials {forwards['trials']})")
        problems += [f"{name} did not read the cache: {t.get('ref_cache')}" for name, t in trials.items()
                     if (t.get("ref_cache") or {}).get("status") != "hit"]
    else:
        if run["cache_manifests"]:
            problems.append("a cache was built in the no_cache variant")
        problems += [f"{name} ran no reference forward" for name, t in trials.items()
                     if t["complete"] and not t.get("run_reference_forwards")]
    return problems


def metric_differences(a: dict, b: dict) -> dict:
    """Max |a - b| over trials with the same name: per final metric, and over every logged loss."""
    diffs: dict[str, float] = {}
    mismatched = []
    for name, ta in a["trials"].items():
        tb = b["trials"].get(name)
        if tb is None or (ta.get("loss"), ta.get("beta")) != (tb.get("loss"), tb.get("beta")):
            mismatched.append(name)
            continue
        for key in COMPARED:
            if key in ta.get("metrics", {}) and key in tb.get("metrics", {}):
                diffs[key] = max(diffs.get(key, 0.0), abs(ta["metrics"][key] - tb["metrics"][key]))
        for key in ("logged_losses", "logged_eval_losses"):
            la, lb = ta.get(key, []), tb.get(key, [])
            if [s for s, _ in la] != [s for s, _ in lb]:
                mismatched.append(f"{name} {key} steps")
                continue
            diffs[key] = max([diffs.get(key, 0.0)] + [abs(x - y) for (_, x), (_, y) in zip(la, lb)])
    return {"max_abs": diffs, "mismatched": mismatched}


def median_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return median(values) if values else None


def training_overlap(run: dict) -> float | None:
    t = run.get("timeline") or {}
    if t.get("first_trial_started") is None or t.get("last_trial_completed") is None:
        return None
    busy = sum(tr["metrics"]["train_runtime"] for tr in run["trials"].values() if tr["complete"])
    return busy / max(t["last_trial_completed"] - t["first_trial_started"], 1e-9)


def summarize(runs: dict[str, list[dict]], examples: dict) -> dict:
    n_examples = examples["train"] + examples["eval"]
    per_variant = {}
    for variant, rs in runs.items():
        walls = [r["wall_seconds"] for r in rs]
        trials = [t for r in rs for t in r["trials"].values() if t["complete"]]
        per_variant[variant] = {
            "wall_seconds": walls,
            "wall_seconds_median": median(walls),
            "reference_forwards": [reference_forwards(r) for r in rs],
            "cache_build_driver_seconds": [sum(b["driver_seconds"] for b in r["cache_builds"]) for r in rs],
            "trial_train_runtime_median": median([t["metrics"]["train_runtime"] for t in trials]) if trials else None,
            "trial_tune_seconds_median": median_of([t.get("tune_time_total_s") for t in trials]),
            # The trial's life outside training and its final evaluation: Ray Train worker start, imports,
            # model and data load, saving, MLflow.
            "trial_overhead_seconds_median": median_of([
                t["tune_time_total_s"] - t["metrics"]["train_runtime"] - t["metrics"].get("eval_runtime", 0.0)
                for t in trials if t.get("tune_time_total_s") is not None]),
            # Sum of the trials' train_runtime over the span from the first trial's start to the last one's
            # end: how many trainings ran at once on average (about 1 means they ran one after another).
            "trainings_at_once": [training_overlap(r) for r in rs],
            "timeline_median": {key: median_of([(r.get("timeline") or {}).get(key) for r in rs])
                                for key in ("cache_built", "first_trial_started", "last_trial_completed", "exit")},
            "trial_steps": sorted({t["steps"] for t in trials}),
            "concurrent_trials": sorted({r["concurrent_trials"] for r in rs if r["concurrent_trials"]}),
            "load_average_1min_before": [r["load_average_1min_before"] for r in rs],
        }
    summary: dict = {"examples": {**examples, "total": n_examples}, "variants": per_variant}
    if "cache" in runs and "no_cache" in runs:
        rounds = list(zip(runs["cache"], runs["no_cache"]))
        per_round = [c["wall_seconds"] / n["wall_seconds"] for c, n in rounds]
        diffs = [metric_differences(n, c) for c, n in rounds]
        worst: dict[str, float] = {}
        for d in diffs:
            for k, v in d["max_abs"].items():
                worst[k] = max(worst.get(k, 0.0), v)
        summary.update(
            wall_ratio_per_round=per_round,
            wall_ratio=median(per_round),
            metric_max_abs_difference=worst,
            metric_mismatched=sorted({m for d in diffs for m in d["mismatched"]}),
        )
    return summary


def check_targets(summary: dict, problems: list[str]) -> list[dict]:
    checks = []
    if "wall_ratio" in summary:
        limit = TARGETS["wall_time_cache_over_no_cache"]
        checks.append({"what": "sweep wall time cache / no_cache (median of per-round ratios)",
                       "value": summary["wall_ratio"], "target": f"<= {limit}", "met": summary["wall_ratio"] <= limit})
        worst = max(summary["metric_max_abs_difference"].values(), default=math.inf)
        limit = TARGETS["max_abs_metric_difference"]
        checks.append({"what": "max |metric difference| cache vs no_cache, same trial",
                       "value": worst, "target": f"<= {limit}",
                       "met": worst <= limit and not summary["metric_mismatched"]})
    cached = summary["variants"].get("cache")
    if cached:
        totals = [f["total"] for f in cached["reference_forwards"]]
        n = summary["examples"]["total"]
        checks.append({"what": "reference forwards with the cache (each round) / train+eval examples",
                       "value": totals, "target": f"== {n}", "met": all(t == n for t in totals)})
    checks.append({"what": "every run complete and consistent", "value": problems, "target": "[]",
                   "met": not problems})
    return checks


def print_results(summary: dict, checks: list[dict]) -> None:
    ex = summary["examples"]
    print(f"\nexamples: {ex['train']} train + {ex['eval']} eval = {ex['total']}")
    head = f"{'variant':<10}{'wall s per round':>28}{'median':>9}{'ratio':>8}{'ref forwards (build + trials)':>32}"
    print(head + "\n" + "-" * len(head))
    for variant, v in summary["variants"].items():
        walls = " ".join(f"{w:.0f}" for w in v["wall_seconds"])
        ratio = f"{summary['wall_ratio']:.2f}x" if variant == "cache" and "wall_ratio" in summary else ""
        fw = v["reference_forwards"][0]
        forwards = f"{fw['total']} ({fw['cache_build']} + {fw['trials']})"
        print(f"{variant:<10}{walls:>28}{v['wall_seconds_median']:>9.0f}{ratio:>8}{forwards:>32}")
    for variant, v in summary["variants"].items():
        builds = [s for s in v["cache_build_driver_seconds"] if s]
        print(f"{variant}: trial train_runtime median {v['trial_train_runtime_median'] or 0:.1f} s, steps "
              f"{v['trial_steps']}, {v['concurrent_trials']} trials at once"
              + (f", cache build {builds} s (driver)" if builds else "")
              + f"; trainings at once {[round(x, 2) if x else x for x in v['trainings_at_once']]}"
              + f"; load before {[round(x, 1) for x in v['load_average_1min_before']]}")
    print("where the time goes (medians, s): driver start -> [cache built] -> first trial -> last trial done -> exit;"
          " per trial: Tune's time, train_runtime, the rest")
    for variant, v in summary["variants"].items():
        t = v["timeline_median"]
        shown = " -> ".join(f"{t[k]:.0f}" if t[k] is not None else "-" for k in t)
        print(f"  {variant:<9} {shown};  trial {v['trial_tune_seconds_median'] or 0:.0f} = train "
              f"{v['trial_train_runtime_median'] or 0:.0f} + {v['trial_overhead_seconds_median'] or 0:.0f}")
    if "wall_ratio_per_round" in summary:
        print(f"per-round ratios: {[round(r, 3) for r in summary['wall_ratio_per_round']]}")
        print("max |difference| cache vs no_cache: "
              + ", ".join(f"{k} {v:.2e}" for k, v in summary["metric_max_abs_difference"].items()))
    print()
    for check in checks:
        value = check["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{'MET ' if check['met'] else 'MISS'} {check['what']}: {shown} (target {check['target']})")


def all_problems(runs: dict[str, list[dict]], examples: dict) -> list[str]:
    n = examples["train"] + examples["eval"]
    return [f"{r['variant']} round {r['round']}: {p}" for rs in runs.values() for r in rs
            for p in check_run(r, n, len(BETAS) * 2)]


def report(path: Path) -> int:
    results = json.loads(path.read_text())
    summary = summarize(results["runs"], results["examples"])
    checks = check_targets(summary, all_problems(results["runs"], results["examples"]))
    print_results(summary, checks)
    write_json(path, {**results, "summary": summary, "checks": checks})
    return 0


def round_line(run: dict) -> str:
    fw = reference_forwards(run)
    return (f"{run['wall_seconds']:6.1f} s  reference forwards {fw['total']} (build {fw['cache_build']}, "
            f"trials {fw['trials']})  {run['concurrent_trials']} at once  load before {run['load_average_1min_before']:.1f}")


# ---- driver ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternation rounds A B A B (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a tiny model, 16 short pairs, 1 round (a few minutes)")
    parser.add_argument("--max-samples", type=int, default=64, help="pairs of dpo_en_demo (train + eval)")
    parser.add_argument("--val-size", type=float, default=0.125)
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval-batch-size", type=int, default=4)
    parser.add_argument("--eval-steps", type=int, default=7)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--trial-cpus", type=float, default=1, help="CPUs per trial's worker (default 1)")
    parser.add_argument("--max-concurrent-trials", type=int, default=None,
                        help="default: what the sweep picks (cluster CPUs or GPUs / per trial)")
    parser.add_argument("--run-timeout", type=int, default=1800, help="seconds per sweep")
    parser.add_argument("--keep", action="store_true", help="keep each run's dirs (logs, outputs) and print where")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sweep_cache[_cuda].json)")
    parser.add_argument("--report", metavar="JSON",
                        help="recompute the summary and checks of a results file from its runs and print them")
    args = parser.parse_args(argv)
    if args.report:
        return report(Path(args.report))
    model_shape = MODEL
    if args.quick:
        model_shape = QUICK_MODEL
        args.rounds, args.max_samples, args.cutoff_len, args.eval_steps = 1, 16, 256, 4
    out_json = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        ("sweep_cache_quick" if args.quick else "sweep_cache") + ("_cuda" if args.device == "cuda" else "") + ".json")

    from trainer.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="sweep-cache-", dir="/tmp"))
    try:
        model_dir = build_tiny_model(root / "model", [REPO / "data" / "dpo_en_demo.json"], seed=0,
                                     max_position_embeddings=max(2048, args.cutoff_len), **model_shape)
        examples = count_examples(args, model_dir, root / "count")
        print(f"{examples['train']} train + {examples['eval']} eval examples; {len(BETAS) * 2} trials per sweep; "
              f"{args.rounds} rounds of {' '.join(VARIANTS)}", flush=True)
        runs = alternate(VARIANTS, args.rounds, lambda v, r: run_sweep(args, model_dir, root, v, r), round_line)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"run dirs kept under {root}")

    problems = all_problems(runs, examples)
    summary = summarize(runs, examples)
    checks = check_targets(summary, problems)
    print_results(summary, checks)
    write_json(out_json, {
        **results_header("benchmarks.sweep_cache", argv if argv is not None else sys.argv[1:], args.device, REPO,
                         packages=("torch", "transformers", "ray", "mlflow", "accelerate")),
        "setup": {
            "model": {"architecture": "LlamaForCausalLM", **model_shape, "tie_word_embeddings": False,
                      "dtype": "bfloat16" if args.device == "cuda" else "float32"},
            "losses_and_betas": BETAS,
            "spec_example": sweep_spec(args, Path("<model>"), Path("<run>"), "cache", 0),
            "rounds": args.rounds,
            "quick": args.quick,
        },
        "examples": examples,
        "targets": TARGETS,
        "summary": summary,
        "checks": checks,
        "runs": runs,
    })
    print(f"\nwrote {out_json.relative_to(REPO) if out_json.is_relative_to(REPO) else out_json}")
    return 0 if all(c["met"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
