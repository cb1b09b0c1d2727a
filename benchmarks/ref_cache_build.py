"""The sweep driver's reference cache build with 1 and with 2 shard workers, alternated in one invocation.

    python -m benchmarks.ref_cache_build [--rounds 3] [--rows 300] [--layers 4] [--hidden 256] [--out FILE]

One local Ray (token auth, loopback); a random-weight Llama built offline (`--layers` x `--hidden`, the demo
tokenizer) on the demo pairs (`--rows` of them, cutoff 512); each run builds the cache of one config into a
fresh `file://` root through `rayjobs.ref_cache_build.build_caches` (the sweep driver's path: a plan task,
one Ray task per shard, the manifest last), and checks the manifest counts one reference forward per
example. Rounds alternate 1 2 1 2 ...; reported: each wall (plan + shards + commit), the median per variant,
the 1/2 ratio, and the 1-minute load average before each run. Each shard task loads the tokenizer, data
and model itself, so on a small model that fixed cost bounds the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import alternate, median, results_header, write_json

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ref_cache_build", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=300, help="demo pairs in the cache (at most 300)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ref_cache_build.json"))
    args = parser.parse_args(argv)

    import ray

    from rayjobs.local_ray import ensure_ray
    from rayjobs.ref_cache_build import build_caches
    from trainer.config import load_config
    from trainer.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="prefsweep-refbuild-"))
    demo = REPO / "data" / "dpo_en_demo.json"
    model = build_tiny_model(work / "model", [demo], vocab_size=1024, seed=0, hidden_size=args.hidden,
                             intermediate_size=2 * args.hidden, num_hidden_layers=args.layers)
    ensure_ray(num_cpus=os.cpu_count(), log_to_driver=False)

    def run_one(variant: str, round_: int) -> dict:
        shards = int(variant.split()[0])
        root = f"file://{work}/cache-{round_}-{shards}"
        cfg = load_config({
            "model_name_or_path": str(model), "stage": "dpo", "do_train": True, "finetuning_type": "lora",
            "dataset": "dpo_en_demo", "dataset_dir": str(REPO / "data"), "template": "default",
            "cutoff_len": 512, "max_samples": args.rows, "val_size": 0, "output_dir": str(work / "out"),
            "per_device_eval_batch_size": 8, "precompute_ref": "always", "ref_cache_dir": root,
        })
        load = os.getloadavg()[0]
        started = time.perf_counter()
        [info] = build_caches([cfg], shards=shards, per_worker={"CPU": 1.0})
        wall = time.perf_counter() - started
        manifest = json.loads(Path(f"{work}/cache-{round_}-{shards}/{info.key}/manifest.json").read_text())
        assert info.status == "miss" and manifest["reference_forwards"] == args.rows, (info, manifest)
        assert manifest["shards"] == shards
        return {"shards": shards, "wall_s": wall, "load_1min_before": load, "forwards": manifest["reference_forwards"]}

    variants = ["1 worker", "2 workers"]
    runs = alternate(variants, args.rounds, run_one,
                     lambda r: f"wall {r['wall_s']:.1f}s (load {r['load_1min_before']:.1f} before)")
    walls = {v: median([r["wall_s"] for r in runs[v]]) for v in variants}
    ratio = walls["1 worker"] / walls["2 workers"]
    print(f"median build wall: 1 worker {walls['1 worker']:.1f}s, 2 workers {walls['2 workers']:.1f}s; "
          f"1/2 = {ratio:.2f}x ({args.rows} examples, {args.layers} layers x hidden {args.hidden}, "
          f"{os.cpu_count()} CPUs)")
    payload = {**results_header("benchmarks.ref_cache_build", sys.argv[1:] if argv is None else argv, "cpu", REPO,
                                packages=("torch", "ray", "pyarrow")),
               "rows": args.rows, "layers": args.layers, "hidden": args.hidden, "runs": runs,
               "median_wall_s": walls, "ratio_1_over_2": ratio}
    write_json(args.out, payload)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
