"""What DistributedDataParallel costs a run of one process: the same training step with and without DDP around
the model, in one process, alternated (issue 19 item 5; why `rayjobs.worker.train_as_one_process` exists).

    python -m benchmarks.ddp_world_of_one [--steps 12] [--rounds 3] [--out benchmarks/results/ddp_world_of_one.json]

Ray Train opens a gloo process group even for one worker and sets LOCAL_RANK, and accelerate then had the
Trainer wrap the model in DDP with a world of one. Here: `benchmarks.ray_overhead`'s model (a random Llama,
32k vocabulary, hidden 256, 4 layers, full fine-tuning, AdamW), a batch of 8 sequences of 256 tokens (the
benchmark's 4 pairs), two copies with the same initial weights, one plain and one inside DDP over a gloo group of
one (127.0.0.1). Each round runs `--steps` steps of one copy, then of the other, the order swapped every round;
the first step of each copy is a warm-up and not timed. Both copies must log the same losses (a world of one
averages each gradient with itself), so both do the same work. Reported: median seconds per step of each, and
their ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

from benchmarks._common import median, results_header, write_json
from benchmarks.ray_overhead import MODEL

REPO = Path(__file__).resolve().parents[1]
BATCH, LENGTH = 8, 256


def build(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**MODEL, max_position_embeddings=LENGTH)
    return LlamaForCausalLM(config)


def step(model, optimizer, batch) -> float:
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp_world_of_one.json"))
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        plain = build()
        wrapped = DistributedDataParallel(copy.deepcopy(plain))  # what the Trainer did under Ray Train
        copies = {"plain": plain, "ddp": wrapped}
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in copies.items()}
        batch = torch.randint(0, MODEL["vocab_size"], (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
        seconds: dict[str, list[float]] = {name: [] for name in copies}
        losses: dict[str, list[float]] = {name: [] for name in copies}
        for name in copies:  # warm-up step, not timed
            losses[name].append(step(copies[name], optimizers[name], batch))
        for round_ in range(args.rounds):
            order = list(copies) if round_ % 2 == 0 else list(reversed(copies))
            for name in order:
                for _ in range(args.steps):
                    start = time.perf_counter()
                    losses[name].append(step(copies[name], optimizers[name], batch))
                    seconds[name].append(time.perf_counter() - start)
                print(f"round {round_ + 1}/{args.rounds} {name:6s} median {median(seconds[name][-args.steps:]):.3f} s/step",
                      flush=True)
    finally:
        dist.destroy_process_group()

    max_diff = max(abs(a - b) for a, b in zip(losses["plain"], losses["ddp"]))
    medians = {name: median(values) for name, values in seconds.items()}
    ratio = medians["ddp"] / medians["plain"]
    print(f"losses: max |plain - ddp| {max_diff:.2e} over {len(losses['plain'])} steps")
    print(f"seconds per step: plain {medians['plain']:.3f}, ddp {medians['ddp']:.3f}: DDP / plain {ratio:.3f}x")
    write_json(args.out, {
        **results_header("benchmarks.ddp_world_of_one", list(argv if argv is not None else sys.argv[1:]), "cpu",
                         REPO, dirs=("trainer", "rayjobs"), packages=("torch", "transformers")),
        "setup": {"model": MODEL, "batch": BATCH, "length": LENGTH, "torch_threads": torch.get_num_threads()},
        "seconds_per_step": seconds, "losses": losses, "max_loss_difference": max_diff,
        "median_seconds_per_step": medians, "ddp_over_plain": ratio,
    })
    print(f"wrote {args.out}")
    return 0 if max_diff < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
