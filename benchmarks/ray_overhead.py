"""Ray Train overhead: the same training run in-process vs through Ray Train with one worker (issue 4).

    python -m benchmarks.ray_overhead [--rounds 3] [--quick] [--max-samples N] [--device cpu|cuda]
        [--profile] [--keep-logs DIR] [--out benchmarks/results/ray_overhead.json]
    python -m benchmarks.ray_overhead --report benchmarks/results/ray_overhead.json

What runs: `prefsweep train CONFIG use_ray=false|true output_dir=... --no-mlflow`, the console script users
run, each run its own subprocess; the variants alternate A B A B over `--rounds`. CONFIG is
`configs/tiny_dpo.yaml` with the model, `max_samples` and the `ray:` section replaced (written once, shared
by both variants, so the variants differ only in `use_ray`):

- model: a random `LlamaForCausalLM` from `trainer.tiny_model` with the 32k vocabulary of
  `benchmarks.step_throughput` (hidden 256, 4 layers), built once into a temporary directory;
- data: `data/dpo_en_demo.json`, `max_samples` 128 (112 train / 16 eval pairs: 28 steps of 4 pairs,
  evaluation every 8 steps and at the end, loss logged every 2 steps); `--quick`: 16 samples (4 steps);
- `precompute_ref: never` (no reference cache in either run), `report_to: none` and `--no-mlflow` (no
  tracking), no checkpoints (`save_strategy: "no"`; both save the final model), `use_cpu` on CPU;
- `ray:` one worker with all the machine's CPUs (so Ray gives it the in-process run's torch threads;
  `use_gpu` with `--device cuda`), `storage_path` in the temporary directory. Ray is
  the private local Ray that `prefsweep train` starts when `RAY_ADDRESS` is unset (it is removed from
  the runs' environment); the run's own exit shuts it down, and the driver checks that no process of
  the run's session outlives it (leftovers are reported, then killed). `--attach` instead starts one
  `ray start --head` (127.0.0.1, token auth) before the rounds and runs the Ray variant against it, as a
  job on a running cluster: Ray's own start and stop then fall outside the timed runs.

Measured per run: wall time from subprocess start to exit (the target metric), `train_runtime` from the
output dir's `all_results.json` (the Hugging Face trainer's own clock around `train()`), the phase
timeline from the run's output as it arrives (first output, data loaded, weights loaded, training start
and end, "run finished", exit), and the 1-minute load average before the run. Ratios are medians of
per-round ratios; Ray's fixed cost is the median per-round difference of (wall - train_runtime), its
per-step cost the median difference of train_runtime divided by the steps. Both variants must log the
same losses (every logged training loss and the final `train_loss` within 1e-5); otherwise no ratio is
reported.

`--profile` adds one instrumented Ray run per round-less pass: the driver runs the same CLI under
`benchmarks._ray_profile`, which times Ray's start (`ensure_ray`), `TorchTrainer.fit`
and Ray's shutdown at exit, so the start-up cost splits into Ray start / worker group start / training /
shutdown.

Target (issue 4): Ray Train 1 worker / in-process wall time <= 1.10x on a run of at least a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import alternate, check_launched, launch, median, results_header, write_json
from benchmarks._ray_profile import PROFILE_TAG, SITECUSTOMIZE, print_profile, profile_driver, worker_marks

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "tiny_dpo.yaml"
DATA = REPO / "data" / "dpo_en_demo.json"
VARIANTS = ("in_process", "ray_1_worker")
TARGET_RATIO = 1.10  # issue 4: Ray Train 1 worker / in-process wall time
MIN_RUN_SECONDS = 60.0  # ... on a run of at least a minute
LOSS_TOLERANCE = 1e-5
MODEL = {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 4}

# Phase markers in a run's output (stdout + stderr, as it arrives; Ray forwards worker output with a
# "(RayTrainWorker pid=...)" prefix). The first chunk that matches sets the phase's time.
MARKERS = {
    "data_loaded": re.compile(r"\): \d+ rows"),
    "weights_loaded": re.compile(r"Loading weights:.*100%"),
    "train_start": re.compile(r"(?<![\d/])0/\d+ \["),
    "train_end": re.compile(r"\*{5} train metrics \*{5}"),
    "run_finished": re.compile(r"prefsweep: run finished"),
}
PHASES = ("first_output", *MARKERS, "exit")


# ---- one run -----------------------------------------------------------------------------------------


def cli_command() -> list[str]:
    """`prefsweep` next to this Python (the venv's console script), else `python -m rayjobs.cli`."""
    script = Path(sys.executable).parent / "prefsweep"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rayjobs.cli"]


def run_env(threads: int | None = None, cluster: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)  # a private local Ray, as on a laptop
    env.update(cluster or {})  # --attach: RAY_ADDRESS and token auth of the running head
    if threads:  # both variants; Ray keeps an OMP_NUM_THREADS that is already set
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    else:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key, None)
    return env


class Markers:
    """`on_line` of a run: the time (s since start) of each marker's first match, and --profile's own marks."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.profile: dict[str, float] = {}

    def __call__(self, now: float, text: str) -> None:
        self.times.setdefault("first_output", now)
        if "(RayTrainWorker" in text:
            self.times.setdefault("worker_first_output", now)
        for name, pattern in MARKERS.items():
            if name not in self.times and pattern.search(text) and not (name == "train_start" and "Loading" in text):
                self.times[name] = now
        if text.startswith(PROFILE_TAG):  # "[ray_overhead] NAME SECONDS_SINCE_START" from the profile driver
            _, name, seconds = text.split()
            self.profile[name] = float(seconds)


def launch_run(variant: str, config: Path, output_dir: Path, log_path: Path, *, profile: bool = False,
           timeout: float = 1800, threads: int | None = None, cluster: dict[str, str] | None = None) -> dict:
    """Run the CLI once; wall time, trainer metrics, losses, phase times, leftover processes."""
    use_ray = variant != "in_process"
    args = ["train", str(config), f"use_ray={str(use_ray).lower()}", f"output_dir={output_dir}", "--no-mlflow"]
    cmd = ([sys.executable, "-m", "benchmarks._ray_profile", *args] if profile
           else [*cli_command(), *args])
    env = run_env(threads, cluster if use_ray else None)
    marks_path = log_path.with_suffix(".marks")
    if profile:
        site = log_path.parent / "profile_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
        env["RAY_OVERHEAD_MARKS"] = str(marks_path)
    marks = Markers()
    start_unix = time.time()
    run = launch(cmd, cwd=REPO, env=env, timeout=timeout, log_path=log_path, on_line=marks)
    marks.times["exit"] = run.wall_seconds
    check_launched(run, f"{variant} run", log_path)
    results = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {
        "variant": variant,
        "wall_seconds": run.wall_seconds,
        "train_runtime": results["train_runtime"],
        "train_loss": results["train_loss"],
        "eval_loss": results.get("eval_loss"),
        "steps": state["global_step"],
        "logged_losses": [[e["step"], e["loss"]] for e in state["log_history"] if "loss" in e],
        "phase_seconds": marks.times,
        "profile_seconds": {**marks.profile, **worker_marks(marks_path, start_unix)},
        "cpu_seconds": run.cpu_seconds,
        "load_average_1min_before": run.load_average_1min_before,
        "leftover_processes": run.leftovers,
    }


# ---- the benchmark -----------------------------------------------------------------------------------


def write_config(args, model_dir: Path, root: Path) -> tuple[Path, dict]:
    """`configs/tiny_dpo.yaml` with this benchmark's model, size and Ray section; shared by both variants."""
    import yaml

    config = yaml.safe_load(BASE_CONFIG.read_text())
    config.update(
        model_name_or_path=str(model_dir),
        dataset_dir=str(REPO / "data"),
        max_samples=args.max_samples or (16 if args.quick else 128),
        precompute_ref="never",
        report_to="none",
        save_strategy="no",
        # the worker gets the in-process run's CPUs: Ray sets its OMP_NUM_THREADS from them, so both runs
        # use the same torch threads (with 1 CPU the Ray run would train on 1 thread, the other on all)
        ray={"num_workers": 1, "use_gpu": args.device == "cuda", "storage_path": str(root / "ray_storage"),
             "resources_per_worker": {"CPU": worker_cpus(args), **({"GPU": 1} if args.device == "cuda" else {})}},
    )
    if args.device == "cuda":
        config["bf16"] = True
    else:
        config["use_cpu"] = True  # also where a GPU exists: the benchmark asked for CPU
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def worker_cpus(args) -> int:
    return args.threads or os.cpu_count() or 1


@contextlib.contextmanager
def running_head(root: Path, cpus: int):
    """`ray start --head --block` on 127.0.0.1 with token auth, as on a cluster a job is submitted to; yields
    the environment a client needs (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH). Stopped by killing its
    own process session, never `ray stop` (which would stop every Ray of this user on the machine)."""
    import secrets
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = root / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={cpus}", "--include-dashboard=false", f"--temp-dir={root / 'ray_tmp'}"],
        env={**run_env(), **{k: v for k, v in env.items() if k != "RAY_ADDRESS"}},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        probe = "import ray; ray.init(); print(ray.cluster_resources().get('CPU'))"
        deadline = time.monotonic() + 180
        while True:
            check = subprocess.run([sys.executable, "-c", probe], env=run_env(cluster=env), capture_output=True,
                                   text=True)
            if check.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up: {check.stderr[-2000:]}")
            time.sleep(2)
        print(f"attached to a running Ray head at {env['RAY_ADDRESS']} ({cpus} CPUs)")
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def same_losses(runs: dict[str, list[dict]]) -> dict:
    """Whether every run logged the same training losses and final train_loss (within LOSS_TOLERANCE)."""
    reference = runs["in_process"][0]
    worst = 0.0
    for rs in runs.values():
        for run in rs:
            if [s for s, _ in run["logged_losses"]] != [s for s, _ in reference["logged_losses"]]:
                return {"same": False, "why": "different logged steps", "max_abs_diff": None}
            diffs = [abs(a[1] - b[1]) for a, b in zip(run["logged_losses"], reference["logged_losses"])]
            worst = max([worst, abs(run["train_loss"] - reference["train_loss"]), *diffs])
    return {"same": worst <= LOSS_TOLERANCE, "max_abs_diff": worst, "train_loss": reference["train_loss"],
            "tolerance": LOSS_TOLERANCE}


def summarize(runs: dict[str, list[dict]]) -> dict:
    medians = {}
    for name, rs in runs.items():
        phases = {p: median([r["phase_seconds"][p] for r in rs if p in r["phase_seconds"]])
                  for p in (*PHASES, "worker_first_output") if any(p in r["phase_seconds"] for r in rs)}
        medians[name] = {
            "wall_seconds": median([r["wall_seconds"] for r in rs]),
            "wall_seconds_per_round": [r["wall_seconds"] for r in rs],
            "train_runtime": median([r["train_runtime"] for r in rs]),
            "outside_training_seconds": median([r["wall_seconds"] - r["train_runtime"] for r in rs]),
            "cpu_seconds": median([r["cpu_seconds"] for r in rs]),
            "phase_seconds": phases,
        }
    pairs = list(zip(runs["ray_1_worker"], runs["in_process"]))  # same round = neighbours in time
    steps = runs["in_process"][0]["steps"]
    per_round = [a["wall_seconds"] / b["wall_seconds"] for a, b in pairs]
    comparison = {
        "wall_ratio": median(per_round),
        "wall_ratio_per_round": per_round,
        "train_runtime_ratio": median([a["train_runtime"] / b["train_runtime"] for a, b in pairs]),
        "extra_wall_seconds": median([a["wall_seconds"] - b["wall_seconds"] for a, b in pairs]),
        "startup_overhead_seconds": median([(a["wall_seconds"] - a["train_runtime"])
                                            - (b["wall_seconds"] - b["train_runtime"]) for a, b in pairs]),
        "per_step_overhead_seconds": median([(a["train_runtime"] - b["train_runtime"]) / steps for a, b in pairs]),
        "steps": steps,
    }
    return {"medians": medians, "comparison": comparison}


def check_target(summary: dict, losses: dict, quick: bool = False) -> dict:
    ratio = summary["comparison"]["wall_ratio"]
    base_wall = summary["medians"]["in_process"]["wall_seconds"]
    check = {"what": "wall ray_1_worker / in_process", "value": ratio, "target": f"<= {TARGET_RATIO}",
             "met": ratio <= TARGET_RATIO, "in_process_wall_seconds": base_wall}
    if not losses["same"]:
        check.update(value=None, met=None, why="the variants trained differently; no ratio")
    elif quick:
        check.update(met=None, why="--quick: a smoke run, not the benchmark's run")
    elif base_wall < MIN_RUN_SECONDS:
        check.update(met=None, why=f"the in-process run took {base_wall:.0f} s < {MIN_RUN_SECONDS:.0f} s: "
                                   "the target is for a run of at least a minute (no --quick)")
    return check


def print_results(runs: dict[str, list[dict]], summary: dict, losses: dict, check: dict,
                  profiles: list[dict]) -> None:
    med, cmp_ = summary["medians"], summary["comparison"]
    rounds = len(runs["in_process"])
    print(f"\n{'variant':<14}" + "".join(f"{f'round {i + 1}':>9}" for i in range(rounds))
          + f"{'median':>9}{'trainer':>9}{'outside':>9}{'cpu s':>8}")
    print("-" * (14 + 9 * rounds + 35))
    for name in VARIANTS:
        m = med[name]
        print(f"{name:<14}" + "".join(f"{w:>9.1f}" for w in m["wall_seconds_per_round"])
              + f"{m['wall_seconds']:>9.1f}{m['train_runtime']:>9.1f}{m['outside_training_seconds']:>9.1f}"
              f"{m['cpu_seconds']:>8.1f}")
    print("(wall seconds, subprocess start to exit; trainer: train_runtime; outside: wall - train_runtime;"
          "\n cpu s: user + sys of the CLI process and the children it reaped)")
    print("\nphase times, seconds since the subprocess started (medians; from the run's output as it arrived)")
    phases = [p for p in (*PHASES[:1], "worker_first_output", *PHASES[1:]) if any(p in med[v]["phase_seconds"]
                                                                                  for v in VARIANTS)]
    print(f"{'phase':<22}" + "".join(f"{v:>14}" for v in VARIANTS) + f"{'difference':>12}")
    for p in phases:
        values = [med[v]["phase_seconds"].get(p) for v in VARIANTS]
        diff = f"{values[1] - values[0]:>12.1f}" if None not in values else f"{'':>12}"
        print(f"{p:<22}" + "".join(f"{x:>14.1f}" if x is not None else f"{'-':>14}" for x in values) + diff)
    print(f"\nlosses: {'the same' if losses['same'] else 'DIFFERENT'} in every run (final train_loss "
          f"{losses['train_loss']:.6f}, max |difference| {losses['max_abs_diff']}, tolerance {LOSS_TOLERANCE})")
    if losses["same"]:
        print(f"Ray start-up cost (difference of wall - train_runtime): {cmp_['startup_overhead_seconds']:+.1f} s; "
              f"per-step cost: {cmp_['per_step_overhead_seconds']:+.3f} s x {cmp_['steps']} steps "
              f"(train_runtime ratio {cmp_['train_runtime_ratio']:.3f}x)")
        print(f"wall ratio ray_1_worker / in_process: {cmp_['wall_ratio']:.3f}x (per round "
              f"{', '.join(f'{r:.3f}' for r in cmp_['wall_ratio_per_round'])}; +{cmp_['extra_wall_seconds']:.1f} s)")
    status = {True: "MET ", False: "MISS", None: "N/A "}[check["met"]]
    value = f"{check['value']:.3f}x" if check["value"] is not None else "-"
    print(f"{status} {check['what']}: {value} (target {check['target']}){'; ' + check['why'] if 'why' in check else ''}")
    loads = [r["load_average_1min_before"] for v in VARIANTS for r in runs[v]]
    print(f"1-min load average before the runs: {', '.join(f'{x:.1f}' for x in loads)}")
    if max(loads) > (os.cpu_count() or 1) / 2:
        print(f"WARNING: the machine was busy (load above {(os.cpu_count() or 1) / 2:g} on {os.cpu_count()} cores): "
              "wall times and ratios from this run say little; rerun on a quiet machine")
    leftovers = [p for v in VARIANTS for r in runs[v] for p in r["leftover_processes"]]
    if leftovers:
        print(f"WARNING: {len(leftovers)} processes outlived their run (killed): {leftovers[:3]}")
    for prof in profiles:
        print_profile(prof)


def report(path: Path) -> int:
    results = json.loads(path.read_text())
    runs = results["runs"]
    losses = same_losses(runs)
    summary = summarize(runs)
    check = check_target(summary, losses, results["setup"].get("quick", False))
    print_results(runs, summary, losses, check, results.get("profiles") or [])
    write_json(path, {**results, **summary, "losses": losses, "check": check})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--profile-driver"]:  # = python -m benchmarks._ray_profile
        return profile_driver(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds A B A B (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 samples (4 steps), 1 round")
    parser.add_argument("--max-samples", type=int, default=None, help="default 128 (--quick: 16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16, one GPU for the in-process run and for the Ray worker")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, one instrumented Ray run: where Ray's extra time goes")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads and the Ray worker's CPUs (default: the machine's cores; Ray sets the "
                             "worker's OMP_NUM_THREADS to its CPUs, so both variants use the same threads)")
    parser.add_argument("--attach", action="store_true",
                        help="run the Ray variant against a running `ray start --head` (token auth, 127.0.0.1), "
                             "as a job on a cluster: Ray's own start and stop fall outside the run")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy every run's output log here")
    parser.add_argument("--run-timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray_overhead.json"))
    parser.add_argument("--report", metavar="JSON", help="recompute and print a results file's tables")
    args = parser.parse_args(argv)
    if args.report:
        return report(Path(args.report))
    if args.quick and "--rounds" not in argv:
        args.rounds = 1
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but this Python's torch sees no GPU")

    from trainer.tiny_model import build_tiny_model

    profiles: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        model_dir = build_tiny_model(root / "model", [DATA], seed=0, **MODEL)
        print(f"tiny model built in {time.perf_counter() - start:.1f} s")
        config_path, config = write_config(args, model_dir, root)
        logs = root / "logs"
        logs.mkdir()
        stack = contextlib.ExitStack()
        cluster = stack.enter_context(running_head(root, worker_cpus(args))) if args.attach else None
        def run_one(variant: str, rnd: int) -> dict:
            name = f"{variant}-{rnd}"
            return launch_run(variant, config_path, root / "out" / name, logs / f"{name}.log",
                              timeout=args.run_timeout, threads=args.threads, cluster=cluster)

        runs = alternate(VARIANTS, args.rounds, run_one, lambda run: (
            f"wall {run['wall_seconds']:6.1f} s  train_runtime {run['train_runtime']:6.1f} s  "
            f"train_loss {run['train_loss']:.6f}  load before {run['load_average_1min_before']:.1f}"))
        if args.profile:
            run = launch_run("ray_1_worker", config_path, root / "out" / "profile", logs / "profile.log", profile=True,
                         timeout=args.run_timeout, threads=args.threads, cluster=cluster)
            profiles.append(run)
        stack.close()
        if args.keep_logs:
            shutil.copytree(logs, args.keep_logs, dirs_exist_ok=True)

    losses = same_losses(runs)
    summary = summarize(runs)
    check = check_target(summary, losses, args.quick)
    print_results(runs, summary, losses, check, profiles)
    write_json(args.out, {
        **results_header("benchmarks.ray_overhead", argv, args.device, REPO, dirs=("trainer", "rayjobs"),
                         packages=("ray", "torch", "transformers", "accelerate")),
        "setup": {"config": {k: v for k, v in config.items() if k != "model_name_or_path"}, "model": MODEL,
                  "base_config": str(BASE_CONFIG.relative_to(REPO)), "cli": cli_command()[-1],
                  "rounds": args.rounds, "quick": args.quick,
                  "torch_threads": worker_cpus(args), "worker_cpus": worker_cpus(args),
                  "ray_address": "a running ray start --head (--attach)" if args.attach
                  else "local (RAY_ADDRESS unset: the CLI starts and stops its own Ray)"},
        **summary,
        "losses": losses,
        "target": {"wall_ratio_at_most": TARGET_RATIO, "min_run_seconds": MIN_RUN_SECONDS},
        "check": check,
        "runs": runs,
        "profiles": profiles,
    })
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
