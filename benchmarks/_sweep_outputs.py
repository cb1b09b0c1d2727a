"""What one finished sweep of `benchmarks.sweep_cache` left: its driver's output (cache builds, concurrency,
timeline), the cache manifests, each trial's output dir and Tune's time per trial."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from benchmarks._common import Launched

# Metrics compared between the variants, per trial.
COMPARED = ("train_loss", "eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_logps/chosen")


BUILD_LINE = re.compile(r"prefsweep: reference log-probs (\w+) \((.*)\); (\d+)s")
CONCURRENCY_LINE = re.compile(r"each trial holds (\{.*?\}); up to (\d+) at once")


def trial_results(outputs: Path) -> dict[str, dict]:
    """Per trial dir under the sweep's output_dir: loss, beta, ref_cache.json, final metrics, logged losses."""
    trials = {}
    for trial_dir in sorted(p for p in outputs.iterdir() if p.is_dir() and p.name.startswith("trial_")):
        record: dict = {"complete": False}
        resolved = trial_dir / "resolved_config.yaml"
        if resolved.is_file():
            flat = yaml.safe_load(resolved.read_text())  # TrainConfig.to_yaml: one flat mapping
            record.update(loss=flat.get("pref_loss"), beta=flat.get("pref_beta"))
        cache = trial_dir / "ref_cache.json"
        if cache.is_file():
            info = json.loads(cache.read_text())
            record["ref_cache"] = {k: info.get(k) for k in ("status", "reason", "rows", "reference_forwards")}
            record["run_reference_forwards"] = info.get("run_reference_forwards")
        results = trial_dir / "all_results.json"
        state = trial_dir / "trainer_state.json"
        if results.is_file() and state.is_file():
            metrics = json.loads(results.read_text())
            history = json.loads(state.read_text())["log_history"]
            record.update(
                complete=record.get("run_reference_forwards") is not None,
                metrics={k: metrics[k] for k in (*COMPARED, "train_runtime", "eval_runtime") if k in metrics},
                steps=max((h.get("step", 0) for h in history), default=0),
                logged_losses=[[h["step"], h["loss"]] for h in history if "loss" in h],
                logged_eval_losses=[[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
            )
        trials[trial_dir.name] = record
    return trials


def cache_manifests(cache_root: Path) -> list[dict]:
    manifests = []
    for path in sorted(cache_root.glob("*/manifest.json")) if cache_root.is_dir() else []:
        manifest = json.loads(path.read_text())
        manifests.append({"key": manifest.get("key"), "reference_forwards": manifest.get("reference_forwards"),
                          "rows": {s: f["rows"] for s, f in manifest.get("files", {}).items()}})
    return manifests


def timeline(lines: list[tuple[float, str]], wall: float) -> dict:
    """Seconds from the driver's start to: the cache build's end, the first trial's start, the last trial's
    end, the sweep's summary line, the process's exit (None for what the output did not show)."""

    def first(pattern: str, last: bool = False) -> float | None:
        hits = [t for t, line in lines if re.search(pattern, line)]
        return (hits[-1] if last else hits[0]) if hits else None

    return {
        "sweep_start_line": first(r"^prefsweep: sweep .* each trial holds"),
        "cache_built": first(r"^prefsweep: reference log-probs", last=True),
        "first_trial_started": first(r"^Trial \S+ started"),
        "last_trial_completed": first(r"^Trial \S+ completed", last=True),
        "sweep_finished_line": first(r"^prefsweep: sweep .* finished"),
        "exit": wall,
    }


def tune_trial_seconds(experiment: Path) -> dict[str, float]:
    """Tune's `time_total_s` of each trial (its last result): the trial driver's whole life."""
    seconds = {}
    for result in experiment.glob("trial_*/result.json"):
        rows = [line for line in result.read_text().splitlines() if line.strip()]
        if rows:
            seconds[result.parent.name] = json.loads(rows[-1]).get("time_total_s")
    return seconds


def sweep_outputs(run: Launched, run_dir: Path, experiment: Path) -> dict:
    """The record of one sweep whose driver ran as `run` in `run_dir` (Tune's experiment dir `experiment`)."""
    text, wall = run.text, run.wall_seconds
    builds = [{"status": m[0], "where": m[1], "driver_seconds": int(m[2])} for m in BUILD_LINE.findall(text)]
    concurrency = CONCURRENCY_LINE.search(text)
    result = {
        "wall_seconds": wall,
        "load_average_1min_before": run.load_average_1min_before,
        "load_average_1min_after": os.getloadavg()[0],
        "returncode": run.returncode,
        "timeline": timeline(run.lines, wall),
        "per_trial_resources": concurrency and concurrency[1],
        "concurrent_trials": int(concurrency[2]) if concurrency else None,
        "cache_builds": builds,
        "cache_manifests": cache_manifests(run_dir / "ref_cache"),
        "trials": trial_results(run_dir / "outputs"),
    }
    for name, seconds in tune_trial_seconds(experiment).items():
        if name in result["trials"]:
            result["trials"][name]["tune_time_total_s"] = seconds
    return result
