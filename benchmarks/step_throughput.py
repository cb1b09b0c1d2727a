"""Training-step throughput and peak memory: prefsweep (without and with the reference cache) vs
LLaMA-Factory 0.9.5 vs TRL `DPOTrainer`, side by side, same model, data, batch, cutoff and steps.

    python -m benchmarks.step_throughput [--device cpu|cuda] [--reps 3] [--steps 3] [--warmup 1]
        [--batch-size 2] [--cutoff-len 1024] [--rows long|first] [--profile] [--threads N]
    python -m benchmarks.step_throughput --report benchmarks/results/step_throughput.json

Setup: a random tiny Llama (`trainer.tiny_model`: vocab 32000, hidden 256, 4 layers unless told), template
`default`, `cutoff_len` 1024, `sigmoid` loss, beta 0.1, full fine-tuning, seed 42, no eval, no saving in
the timed steps, one epoch over exactly batch x (warmup + steps) pairs of `data/dpo_en_demo.json`: by
default the first pairs whose longer side fills the cutoff, so every batch is (2 x batch, 1024). Every
run is its own subprocess (clean RSS); the variants alternate A B C D A B C D ... over `--reps` rounds.

- `prefsweep`: `trainer.workflow.build_trainer` + `train()` in-process (`use_ray: false`,
  `precompute_ref: never`): a frozen reference copy runs its forward every step.
- `prefsweep_cache`: the same with `precompute_ref: always` on a cache built once before the timed runs
  (its build time is reported on its own); the runs must hit it and run no reference forward.
- `llamafactory`: LLaMA-Factory 0.9.5's `run_exp` in the peer's Python (`../shared/tools/lf-peer`) with
  `disable_gradient_checkpointing: true`, so it does the same work as the others (no recomputation).
- `llamafactory_default`: the same as LLaMA-Factory users run it, gradient checkpointing on (its
  default): slower, less activation memory. Memory targets are checked against both.
- `trl`: TRL `DPOTrainer` in this venv, fed prefsweep's token ids (equal to LLaMA-Factory's: the same
  prompt/response split and truncation) as `prompt_ids` / `chosen_ids` / `rejected_ids`, so all four
  see the same tokens; `gradient_checkpointing` off (TRL's default is on), `precompute_ref_log_probs`
  off.

Metric (`benchmarks._common.make_step_meter`, the same callback in every peer): response tokens (labels
!= -100 of chosen + rejected) of the timed steps / their summed step time (`on_step_begin` ->
`on_step_end`), warm-up steps excluded. Reported three ways: the median over rounds (ratios: the
median of per-round ratios), each step's fastest round ("best"), and per CPU-second of the process
(steadier than wall time on a shared machine). Peak memory: RSS high-water mark (VmHWM) of the whole
process, and of the training phase over the RSS after model + data load (CUDA: `max_memory_allocated`).
Writes `benchmarks/results/step_throughput.json` (`step_throughput_cuda.json` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import _common
from benchmarks._common import (
    alternate,
    check_launched,
    lf_peer_python,
    median,
    package_version,
    results_header,
    write_json,
)
from benchmarks._profiling import print_profile
from benchmarks._step_workers import LF_VARIANTS, VARIANTS, run_worker

REPO = Path(__file__).resolve().parents[1]
LF_PEER = REPO.parent / "shared" / "tools" / "lf-peer"
BASELINES = ("llamafactory", "llamafactory_default", "trl")
TARGETS = {  # issue 4
    "throughput_vs_peers_without_cache": 1.15,
    "throughput_vs_peers_with_cache": 1.35,
    "peak_memory_vs_llamafactory": 0.6,
}


# ---- the shared config -----------------------------------------------------------------------------


def train_config(args, model_dir: Path, dataset: str, dataset_dir: Path) -> dict:
    """The flat LLaMA-Factory-style config every peer runs (TRL gets the same values as DPOConfig)."""
    total_steps = args.warmup + args.steps
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "pref_beta": 0.1,
        "pref_loss": "sigmoid",
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "default",
        "cutoff_len": args.cutoff_len,
        "max_samples": args.batch_size * total_steps,  # one epoch = exactly the steps we run
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5.0e-6,
        "max_steps": total_steps,
        "logging_steps": total_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "overwrite_output_dir": True,
    }
    if args.device == "cuda":
        config["bf16"] = True
    return config


# ---- driver ------------------------------------------------------------------------------------------


def select_rows(args, model_dir: Path, out_dir: Path) -> tuple[str, list[int]]:
    """Write the benchmark's rows of `data/dpo_en_demo.json` as a dataset in `out_dir`; (name, row numbers).

    `--rows long` (default): the first pairs, in file order, whose longer side fills `cutoff_len` after
    LLaMA-Factory's truncation, so every batch is padded to the cutoff; `--rows first`: the first pairs.
    """
    from trainer.config import load_config
    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    wanted = args.batch_size * (args.warmup + args.steps)
    source = REPO / "data" / "dpo_en_demo.json"
    rows = json.loads(source.read_text())
    if args.rows == "first":
        chosen = list(range(min(wanted, len(rows))))
    else:
        probe = {"model_name_or_path": str(model_dir), "stage": "dpo", "finetuning_type": "full",
                 "dataset": "dpo_en_demo", "dataset_dir": str(REPO / "data"), "template": "default",
                 "cutoff_len": args.cutoff_len, "output_dir": str(out_dir / "probe"), "use_ray": False}
        cfg = load_config(probe)
        data = load_preference_data(cfg.data, load_tokenizer(cfg.model), stage="dpo", seed=0)
        if data.skipped or len(data.train) != len(rows):
            raise ValueError(f"rows were skipped ({data.skipped}); row numbers would not line up")
        lengths = [max(len(c), len(r)) for c, r in zip(data.train["chosen_input_ids"], data.train["rejected_input_ids"])]
        chosen = [i for i, n in enumerate(lengths) if n >= args.cutoff_len][:wanted]
    if len(chosen) < wanted:
        raise ValueError(f"{source} has only {len(chosen)} suitable pairs; {wanted} needed (batch x steps)")
    info = json.loads((REPO / "data" / "dataset_info.json").read_text())["dpo_en_demo"]
    name = f"dpo_en_demo_{args.rows}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps([rows[i] for i in chosen]))
    (out_dir / "dataset_info.json").write_text(json.dumps({name: {**info, "file_name": f"{name}.json"}}))
    return name, chosen


def write_pairs(spec: dict, path: Path) -> int:
    """prefsweep's tokenized pairs (LLaMA-Factory-exact ids) as TRL rows; returns the number of pairs."""
    from trainer.config import load_config
    from trainer.data import load_preference_data
    from trainer.models import load_tokenizer

    cfg = load_config({**spec["config"], "output_dir": str(path.parent / "tokenize"), "use_ray": False})
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tokenizer, stage="dpo", seed=cfg.training["seed"])
    rows = []
    for ex in data.train:
        n_prompt = next(i for i, label in enumerate(ex["chosen_labels"]) if label != -100)
        if ex["rejected_labels"][:n_prompt] != [-100] * n_prompt or ex["rejected_labels"][n_prompt] == -100:
            raise ValueError("chosen and rejected do not share the prompt; cannot split for TRL")
        if ex["chosen_input_ids"][:n_prompt] != ex["rejected_input_ids"][:n_prompt]:
            raise ValueError("chosen and rejected prompt ids differ")
        rows.append({
            "prompt_ids": ex["chosen_input_ids"][:n_prompt],
            "chosen_ids": ex["chosen_input_ids"][n_prompt:],
            "rejected_ids": ex["rejected_input_ids"][n_prompt:],
        })
    path.write_text(json.dumps(rows))
    return len(rows)


def launch(variant: str, spec_path: Path, out_path: Path, args) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    python, env["PYTHONPATH"] = sys.executable, str(REPO)
    if variant in LF_VARIANTS:
        python, stubs = lf_peer_python(args.lf_peer)
        env["PYTHONPATH"] = f"{stubs}:{REPO}"
    cmd = [python, "-m", "benchmarks.step_throughput", "--worker", variant, "--spec", str(spec_path),
           "--out", str(out_path)]
    log_path = out_path.with_suffix(".log")
    run = _common.launch(cmd, cwd=REPO, env=env, timeout=args.run_timeout, log_path=log_path)
    check_launched(run, f"{variant} run", log_path)
    if not out_path.is_file():
        raise SystemExit(f"{variant} run wrote no results; full log {log_path}")
    wall, load = run.wall_seconds, run.load_average_1min_before
    result = json.loads(out_path.read_text())
    result.update(process_wall_seconds=wall, load_average_1min_before=load)
    return result


def memory_of(run: dict, device: str) -> tuple[float, float]:
    """(peak, training peak over the after-load level) in MiB: RSS on CPU, allocated CUDA memory on GPU."""
    mem = run["memory"]
    if device == "cuda":
        return mem["cuda_peak_mib"], mem["cuda_peak_over_load_mib"]
    return mem["peak_rss_mib"], mem["peak_rss_train_over_load_mib"]


def best_of_reps(rs: list[dict]) -> float:
    """Timed response tokens / the sum over timed steps of each step's fastest time across the rounds.

    Every round runs the same batches in the same order, so step i is the same work in each; taking each
    step's least-disturbed run (as `timeit` takes the minimum) filters bursts of load from other users."""
    warmup, steps = rs[0]["warmup"], rs[0]["steps"]
    seconds = sum(min(r["step_seconds"][i] for r in rs) for i in range(warmup, steps))
    return rs[0]["timed_response_tokens"] / seconds


def summarize(runs: dict[str, list[dict]], device: str) -> tuple[dict, dict]:
    medians, ratios = {}, {}
    for name, rs in runs.items():
        peaks = [memory_of(r, device) for r in rs]
        medians[name] = {
            "tokens_per_second_best_of_reps": best_of_reps(rs),
            "tokens_per_second": median([r["tokens_per_second"] for r in rs]),
            "tokens_per_cpu_second": median([r["tokens_per_cpu_second"] for r in rs]),
            "step_seconds": median([r["timed_seconds"] / (r["steps"] - r["warmup"]) for r in rs]),
            "peak_mib": median([p[0] for p in peaks]),
            "train_peak_over_load_mib": median([p[1] for p in peaks]),
        }
    pairs = [(name, base) for name in runs for base in BASELINES if base != name and base in runs]
    if "prefsweep" in runs and "prefsweep_cache" in runs:
        pairs.append(("prefsweep_cache", "prefsweep"))  # what the cache alone buys
    for name, base in pairs:
        rounds = list(zip(runs[name], runs[base]))  # same round = neighbours in time
        per_round = [a["tokens_per_second"] / b["tokens_per_second"] for a, b in rounds]
        ratios[f"{name}/{base}"] = {
            "throughput": median(per_round),
            "throughput_per_round": per_round,
            "throughput_best_of_reps": best_of_reps(runs[name]) / best_of_reps(runs[base]),
            "throughput_cpu_time": median([a["tokens_per_cpu_second"] / b["tokens_per_cpu_second"] for a, b in rounds]),
            "peak_memory": median([memory_of(a, device)[0] / memory_of(b, device)[0] for a, b in rounds]),
            "train_peak_memory": median([memory_of(a, device)[1] / memory_of(b, device)[1] for a, b in rounds]),
        }
    return medians, ratios


def print_table(medians: dict, ratios: dict, device: str) -> None:
    """Per variant: throughput three ways and peak memory; then prefsweep's ratios against each baseline."""
    unit = "CUDA allocated" if device == "cuda" else "RSS"
    print(f"response tokens/s: wall = median over rounds, best = each step's fastest round, cpu = per CPU-second;"
          f"\npeak memory ({unit}, MiB): whole process, and the training phase over the after-load level")
    head = (f"{'variant':<22}{'tok/s':>8}{'best':>8}{'tok/cpu-s':>10}{'s/step':>8}{'peak MiB':>10}"
            f"{'train MiB':>10}")
    print(head + "\n" + "-" * len(head))
    for name, m in medians.items():
        print(f"{name:<22}{m['tokens_per_second']:>8.0f}{m['tokens_per_second_best_of_reps']:>8.0f}"
              f"{m['tokens_per_cpu_second']:>10.0f}{m['step_seconds']:>8.2f}{m['peak_mib']:>10.0f}"
              f"{m['train_peak_over_load_mib']:>10.0f}")
    print("\nratios (medians of per-round ratios; best: ratio of the best-of-rounds throughputs)")
    head = f"{'':<38}{'wall':>7}{'best':>7}{'cpu':>7}{'peak':>7}{'train':>7}"
    print(head + "\n" + "-" * len(head))
    for key, r in ratios.items():
        if key.startswith("prefsweep"):
            print(f"{key.replace('/', ' / '):<38}" + "".join(f"{r[f]:>6.2f}x" for f in (
                "throughput", "throughput_best_of_reps", "throughput_cpu_time", "peak_memory", "train_peak_memory")))


def same_work(runs: dict[str, list[dict]]) -> bool:
    """Whether every run of every peer saw the same batches (response tokens and padded shape per step)."""
    batches = [run["batches"] for rs in runs.values() for run in rs]
    same = all(b == batches[0] for b in batches)
    if not same:
        print("WARNING: the peers did not see the same batches; ratios compare different work")
    return same


def check_targets(ratios: dict) -> list[dict]:
    checks = []
    for variant, target_key in (("prefsweep", "throughput_vs_peers_without_cache"),
                                ("prefsweep_cache", "throughput_vs_peers_with_cache")):
        for base in ("llamafactory", "trl"):  # same work; llamafactory_default recomputes activations
            key = f"{variant}/{base}"
            if key in ratios:
                value = ratios[key]["throughput"]
                checks.append({"what": f"throughput {key}", "value": value, "target": f">= {TARGETS[target_key]}",
                               "met": value >= TARGETS[target_key],
                               "also": {"best_of_reps": ratios[key]["throughput_best_of_reps"],
                                        "cpu_time": ratios[key]["throughput_cpu_time"]}})
    for variant, base in [(v, b) for v in ("prefsweep", "prefsweep_cache") for b in LF_VARIANTS]:
        key = f"{variant}/{base}"
        if key in ratios:
            for field in ("peak_memory", "train_peak_memory"):
                value = ratios[key][field]
                limit = TARGETS["peak_memory_vs_llamafactory"]
                checks.append({"what": f"{field} {key}", "value": value, "target": f"<= {limit}",
                               "met": value <= limit})
    return checks


def show_results(runs: dict[str, list[dict]], device: str, cache_build: dict | None) -> tuple[dict, dict, list]:
    medians, ratios = summarize(runs, device)
    print()
    if cache_build:
        print(f"reference cache build (once, before the timed runs): {cache_build['build_seconds']:.1f} s\n")
    print_table(medians, ratios, device)
    checks = check_targets(ratios)
    print()
    for check in checks:
        also = "".join(f", {k} {v:.2f}x" for k, v in check.get("also", {}).items())
        print(f"{'MET ' if check['met'] else 'MISS'} {check['what']}: {check['value']:.2f}x (target {check['target']}"
              f"{also and '; ' + also[2:]})")
    return medians, ratios, checks


def report(path: Path) -> int:
    results = json.loads(path.read_text())
    device = results["machine"]["device"]
    medians, ratios, checks = show_results(results["runs"], device, results.get("cache_build"))
    for variant, run in (results.get("profiles") or {}).items():
        print_profile(variant, run)
    write_json(path, {**results, "medians": medians, "ratios": ratios, "checks": checks})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--reps", type=int, default=3, help="alternation rounds (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per run (default 1)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rows", choices=("long", "first"), default="long",
                        help="pairs that fill cutoff_len (default) or the file's first pairs")
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed rounds, one torch.profiler run per variant: where the step time goes")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads per run (default: torch's own choice, one per core)")
    parser.add_argument("--lf-peer", default=str(LF_PEER))
    parser.add_argument("--run-timeout", type=int, default=900, help="seconds per subprocess")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/step_throughput[_cuda].json)")
    parser.add_argument("--report", metavar="JSON",
                        help="recompute the medians, ratios and checks of a results file from its runs and print them")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.spec, args.out)
    if args.report:
        return report(Path(args.report))

    from trainer.tiny_model import build_tiny_model

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out_json = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "step_throughput.json" if args.device == "cpu" else "step_throughput_cuda.json")

    with tempfile.TemporaryDirectory(prefix="step-throughput-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(
            root / "model", [REPO / "data" / "dpo_en_demo.json"], vocab_size=args.vocab_size, seed=0,
            hidden_size=args.hidden_size, intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(2048, args.cutoff_len),
        )
        dataset, row_numbers = select_rows(args, model_dir, root / "data")
        spec = {"config": train_config(args, model_dir, dataset, root / "data"), "device": args.device,
                "warmup": args.warmup,
                "pairs_file": str(root / "pairs.json"), "ref_cache_dir": str(root / "ref_cache")}
        n_pairs = write_pairs(spec, root / "pairs.json")
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps(spec))

        cache_build = None
        if "prefsweep_cache" in variants:
            cache_build = launch("cache_build", spec_path, root / "cache_build.json", args)
            print(f"reference cache built in {cache_build['build_seconds']:.1f} s "
                  f"(process {cache_build['process_wall_seconds']:.1f} s)")

        runs = alternate(variants, args.reps, lambda v, rep: launch(v, spec_path, root / f"{v}-{rep}.json", args),
                         lambda r: (f"{r['tokens_per_second']:8.0f} tok/s  steps {[round(s, 2) for s in r['step_seconds']]}"
                                    f"  peak {memory_of(r, args.device)[0]:.0f} MiB  (process {r['process_wall_seconds']:.0f} s)"))

        profiles = {}
        if args.profile:
            profile_spec = root / "spec_profile.json"
            profile_spec.write_text(json.dumps({**spec, "profile": True}))
            for variant in variants:
                profiles[variant] = launch(variant, profile_spec, root / f"{variant}-profile.json", args)
                print_profile(variant, profiles[variant])

    medians, ratios, checks = show_results(runs, args.device, cache_build)
    same_batches = same_work(runs)

    packages = ("torch", "transformers", "trl", "peft", "accelerate")
    versions = {"prefsweep_env": {p: package_version(None, p) for p in packages}}
    if set(LF_VARIANTS) & set(variants):
        lf_py, stubs = lf_peer_python(args.lf_peer)
        versions["llamafactory_env"] = {p: package_version(lf_py, p, {**os.environ, "PYTHONPATH": stubs})
                                        for p in ("llamafactory", *packages)}
    setup = {
        "model": {"architecture": "LlamaForCausalLM", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
                  "intermediate_size": args.intermediate_size, "num_hidden_layers": args.layers,
                  "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
                  "tie_word_embeddings": False, "dtype": "bfloat16" if args.device == "cuda" else "float32"},
        "pairs": n_pairs,
        "rows": {"selection": args.rows, "source": "data/dpo_en_demo.json", "row_numbers": row_numbers},
        "config": {k: v for k, v in spec["config"].items() if k not in ("model_name_or_path", "dataset_dir")},
        "reps": args.reps, "steps": args.steps, "warmup": args.warmup, "variants": variants,
        "threads": args.threads or "default",
        "same_batches_in_every_run": same_batches,
    }
    write_json(out_json, {
        **results_header("benchmarks.step_throughput", argv if argv is not None else sys.argv[1:], args.device, REPO),
        "versions": versions,
        "setup": setup,
        "cache_build": cache_build,
        "medians": medians,
        "ratios": ratios,
        "targets": TARGETS,
        "checks": checks,
        "runs": runs,
        "profiles": profiles,
    })
    print(f"\nwrote {out_json.relative_to(REPO) if out_json.is_relative_to(REPO) else out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
