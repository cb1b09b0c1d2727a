"""A model with a real model's shape: prefsweep (without the reference cache, and building its own) vs
LLaMA-Factory 0.9.5 (gradient checkpointing on, its default, and off) vs TRL 1.16 `DPOTrainer`, for LoRA and
full fine-tuning, alternated in one invocation; ratios of in-loop throughput, whole-process wall, peak RSS.

    python -m benchmarks.realistic_shape [--modes lora,full] [--reps 2] [--steps 2] [--warmup 1]
        [--layers 30] [--cutoff-len 512] [--batch-size 2] [--workdir DIR] [--profile]
    python -m benchmarks.realistic_shape --report benchmarks/results/realistic_shape.json

Model: SmolLM2-135M's configuration (`LlamaForCausalLM`, hidden 576, intermediate 1536, 30 layers, 9 heads,
3 KV heads, vocab 49152, tied embeddings, rope_theta 100000) with random float32 weights, built offline by
`trainer.tiny_model.build_tiny_model` (its byte-level BPE trained on the demo data, padded to 49152);
`--layers` keeps the shape of every layer and drops layers. Data, loss and optimizer as
`benchmarks.step_throughput` (whose config, row selection, TRL pairs, launcher and ratios this reuses):
pairs of `data/dpo_en_demo.json` that fill the cutoff, `sigmoid`, beta 0.1, batch 2, AdamW.
LoRA: rank 8, alpha 16, every linear layer but the head (`lora_target: all`; TRL: peft's `all-linear`).

Variants (each run its own process; every peer saves its model at the end, as `run_exp` does):
- `prefsweep`: `run_training`, `precompute_ref: never` (LoRA: adapters-off reference forward each step;
  full: a frozen copy of the weights runs it).
- `prefsweep_cache_build`: `run_training`, `precompute_ref: always` on an empty cache root of its own: it
  builds the cache with the policy itself (one copy of the weights), then trains with no reference forward.
  Its loop is what the cache gives; its process wall and peak RSS include the build.
- `prefsweep_cache_build_gc`: the same with `gradient_checkpointing: true` (LF's default memory setting).
- `llamafactory_default` / `llamafactory`: `run_exp` in the peer's venv, gradient checkpointing on (LF's
  default) / off (the same work as the others).
- `trl`: `DPOTrainer` on prefsweep's token ids, gradient checkpointing and precomputed ref log-probs off.

Writes `benchmarks/results/realistic_shape.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks._common import alternate, lf_peer_python, median, package_version, results_header, write_json
from benchmarks._profiling import print_profile
from benchmarks._step_workers import CACHE_BUILD_IN_RUN, CACHE_BUILD_IN_RUN_GC, LF_VARIANTS
from benchmarks.step_throughput import (
    LF_PEER,
    launch,
    memory_of,
    same_work,
    select_rows,
    summarize,
    train_config,
)
from benchmarks.step_throughput import write_pairs as write_trl_pairs

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0}
VARIANTS = ("prefsweep", CACHE_BUILD_IN_RUN, CACHE_BUILD_IN_RUN_GC, "llamafactory_default", "llamafactory", "trl")
LORA = {"finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_target": "all", "learning_rate": 1e-4}
TARGETS = {  # issue 19, against LLaMA-Factory: (ratio, target, at least / at most)
    "in_loop_lora_with_cache": 1.4, "in_loop_full_with_cache": 1.6, "in_loop_without_cache": 1.1,
    "whole_process_without_cache": 1.2, "peak_rss": 0.7,
}


def build_model(root: Path, layers: int, cutoff_len: int) -> Path:
    from trainer.tiny_model import build_tiny_model

    model_dir = root / f"smollm2_135m_shape_{layers}l"
    if not (model_dir / "config.json").is_file():
        shape = {**SMOLLM2_135M, "num_hidden_layers": layers}
        build_tiny_model(model_dir, [REPO / "data" / "dpo_en_demo.json"], seed=0,
                         max_position_embeddings=max(2048, cutoff_len), **shape)
    return model_dir


def mode_specs(args, root: Path, model_dir: Path) -> dict[str, Path]:
    """Per fine-tuning mode: the spec file its runs read (config, TRL pairs, cache root)."""
    dataset, _ = select_rows(args, model_dir, root / "data")
    specs = {}
    for mode in args.modes:
        config = {**train_config(args, model_dir, dataset, root / "data"), **(LORA if mode == "lora" else {})}
        spec = {"config": config, "device": args.device, "warmup": args.warmup, "whole_run": True,
                "pairs_file": str(root / f"pairs_{mode}.json"), "ref_cache_dir": str(root / f"ref_cache_{mode}")}
        write_trl_pairs(spec, root / f"pairs_{mode}.json")
        specs[mode] = root / f"spec_{mode}.json"
        specs[mode].write_text(json.dumps(spec))
    return specs


def process_ratios(runs: dict[str, list[dict]]) -> dict[str, float]:
    """Whole-process wall of each peer over prefsweep's (> 1: prefsweep is faster), median of rounds."""
    out = {}
    for name in runs:
        for base in ("llamafactory_default", "llamafactory", "trl"):
            if base in runs and name.startswith("prefsweep"):
                per_round = [b["process_wall_seconds"] / a["process_wall_seconds"]
                             for a, b in zip(runs[name], runs[base])]
                out[f"{name}/{base}"] = median(per_round)
    return out


def check_targets(mode: str, ratios: dict, process: dict) -> list[dict]:
    checks = []

    def check(what: str, value: float, target: float, at_least: bool = True) -> None:
        met = value >= target if at_least else value <= target
        checks.append({"mode": mode, "what": what, "value": value, "target": f"{'>=' if at_least else '<='} {target}",
                       "met": met})

    for lf in LF_VARIANTS:
        for name in ("prefsweep", CACHE_BUILD_IN_RUN, CACHE_BUILD_IN_RUN_GC):
            key = f"{name}/{lf}"
            if key in ratios:
                if name != CACHE_BUILD_IN_RUN_GC:  # the speed targets are for the default (no recomputation)
                    target = TARGETS["in_loop_without_cache" if name == "prefsweep" else f"in_loop_{mode}_with_cache"]
                    check(f"in-loop tokens/s {key}", ratios[key]["throughput"], target)
                check(f"peak RSS {key}", ratios[key]["peak_memory"], TARGETS["peak_rss"], at_least=False)
        if f"prefsweep/{lf}" in process:
            check(f"whole process prefsweep/{lf}", process[f"prefsweep/{lf}"], TARGETS["whole_process_without_cache"])
    return checks


def show(results: dict) -> None:
    for mode, part in results["modes"].items():
        print(f"\n== {mode} ==")
        print(f"{'variant':<24}{'tok/s':>8}{'tok/cpu-s':>10}{'s/step':>8}{'process s':>11}{'peak MiB':>10}")
        for name, m in part["medians"].items():
            walls = [r["process_wall_seconds"] for r in part["runs"][name]]
            print(f"{name:<24}{m['tokens_per_second']:>8.1f}{m['tokens_per_cpu_second']:>10.1f}"
                  f"{m['step_seconds']:>8.2f}{median(walls):>11.1f}{m['peak_mib']:>10.0f}")
        print(f"\n{'ratio (>1 in loop/process: prefsweep faster)':<46}{'loop':>7}{'cpu':>7}{'process':>9}{'peak':>7}")
        for key, r in part["ratios"].items():
            if key.startswith("prefsweep") and "/prefsweep" not in key:
                proc = part["process_ratios"].get(key)
                print(f"{key.replace('/', ' / '):<46}{r['throughput']:>6.2f}x{r['throughput_cpu_time']:>6.2f}x"
                      f"{(f'{proc:.2f}x' if proc else '-'):>9}{r['peak_memory']:>6.2f}x")
        for c in part["checks"]:
            print(f"{'MET ' if c['met'] else 'MISS'} {c['what']}: {c['value']:.2f}x (target {c['target']})")


def summarize_mode(mode: str, runs: dict[str, list[dict]], device: str) -> dict:
    medians, ratios = summarize(runs, device)
    process = process_ratios(runs)
    return {"medians": medians, "ratios": ratios, "process_ratios": process,
            "checks": check_targets(mode, ratios, process), "same_batches": same_work(runs), "runs": runs}


def report(path: Path) -> int:
    results = json.loads(path.read_text())
    for mode, part in results["modes"].items():
        part.update(summarize_mode(mode, part["runs"], results["machine"]["device"]))
    show(results)
    write_json(path, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--reps", type=int, default=2, help="alternation rounds (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per run (default 1)")
    parser.add_argument("--layers", type=int, default=SMOLLM2_135M["num_hidden_layers"],
                        help="decoder layers (default 30, SmolLM2-135M's); fewer keep each layer's shape")
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rows", choices=("long", "first"), default="long")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="then one torch.profiler run per variant and mode")
    parser.add_argument("--workdir", default=None, help="keep the model, data and specs here (reused if present)")
    parser.add_argument("--lf-peer", default=str(LF_PEER))
    parser.add_argument("--run-timeout", type=int, default=1200, help="seconds per subprocess")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "realistic_shape.json"))
    parser.add_argument("--report", metavar="JSON", help="recompute a results file's ratios from its runs")
    args = parser.parse_args(argv)
    args.device = "cpu"  # GPU runs (bf16, MFU) are issue 19 item 7, not done here
    if args.report:
        return report(Path(args.report))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.modes) - {"lora", "full"} or set(variants) - set(VARIANTS):
        parser.error(f"modes are lora, full; variants are {list(VARIANTS)}")

    with tempfile.TemporaryDirectory(prefix="realistic-shape-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        model_dir = build_model(root, args.layers, args.cutoff_len)
        specs = mode_specs(args, root, model_dir)
        jobs = [f"{mode}:{v}" for mode in args.modes for v in variants]

        done: list[dict] = []

        def run_one(job: str, rep: int) -> dict:
            mode, variant = job.split(":")
            run = launch(variant, specs[mode], root / f"{mode}-{variant}-{rep}.json", args)
            done.append({"job": job, "round": rep, **run})  # kept as it goes: a cut-short run leaves its rounds
            write_json(f"{args.out}.partial", {"runs": done})
            return run

        flat = alternate(jobs, args.reps, run_one, lambda r: (
            f"{r['tokens_per_second']:7.1f} tok/s  steps {[round(s, 1) for s in r['step_seconds']]}  "
            f"peak {memory_of(r, 'cpu')[0]:.0f} MiB  process {r['process_wall_seconds']:.0f} s  "
            f"load {r['load_average_1min_before']:.1f}"))
        profiles = {}
        if args.profile:
            for mode, spec_path in specs.items():
                profile_spec = root / f"spec_{mode}_profile.json"
                profile_spec.write_text(json.dumps({**json.loads(spec_path.read_text()), "profile": True}))
                for variant in variants:
                    run = launch(variant, profile_spec, root / f"{mode}-{variant}-profile.json", args)
                    profiles[f"{mode}:{variant}"] = run
                    print_profile(f"{mode} {variant}", run)
        config = json.loads(specs[args.modes[0]].read_text())["config"]

    modes = {mode: summarize_mode(mode, {v: flat[f"{mode}:{v}"] for v in variants}, "cpu") for mode in args.modes}
    lf_py, stubs = lf_peer_python(args.lf_peer)
    packages = ("torch", "transformers", "trl", "peft", "accelerate")
    results = {
        **results_header("benchmarks.realistic_shape", argv if argv is not None else sys.argv[1:], "cpu", REPO),
        "versions": {"prefsweep_env": {p: package_version(None, p) for p in packages},
                     "llamafactory_env": {p: package_version(lf_py, p, {**os.environ, "PYTHONPATH": stubs})
                                          for p in ("llamafactory", *packages)}},
        "setup": {"model": {"architecture": "LlamaForCausalLM", **SMOLLM2_135M, "num_hidden_layers": args.layers,
                            "dtype": "float32", "weights": "random (seed 0)"},
                  "config": {k: v for k, v in config.items() if k not in ("model_name_or_path", "dataset_dir")},
                  "lora": LORA, "reps": args.reps, "steps": args.steps, "warmup": args.warmup,
                  "variants": variants, "modes": args.modes, "threads": args.threads or "default"},
        "targets": TARGETS,
        "modes": modes,
        "profiles": profiles,
    }
    show(results)
    write_json(args.out, results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
