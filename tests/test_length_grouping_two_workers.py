"""Length grouping with two Ray Train workers, and a mid-epoch resume: every rank's batches, fingerprinted.

`train_sampling_strategy: group_by_length` on 2 CPU workers (per-device batch 2, global batch 4; 32 pairs, so
8 steps an epoch), run as `tests/test_fault_worker_death` runs it: rank 1 SIGKILLs itself after step 5, the
worker group restarts from checkpoint-3 (mid-epoch) and skips the 3 trained batches. A callback records
the rows each rank's collator gets (a hash of each row's token ids), per attempt. The reference is the
same config in one process with batch 4, never interrupted.

Checked: at every step the two ranks' rows are disjoint and together are exactly the reference's batch of
that step (both ranks computed the same grouped order and took their own halves); the restarted attempt's
steps 4-6 are the reference's steps 4-6 (the resumed epoch is the uninterrupted one, not a reshuffle); the
first attempt's steps 4-5 equal the restarted attempt's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pytest
from transformers import TrainerCallback

from rayjobs import train
from tests.test_fault_worker_death import KILL_STEP, MAX_STEPS, SAVE_STEPS, config, run_killed
from trainer.workflow import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GROUPING = {"train_sampling_strategy": "group_by_length"}


def row_id(row: dict) -> str:
    data = json.dumps([list(row["chosen_input_ids"]), list(row["rejected_input_ids"])]).encode()
    return hashlib.sha1(data).hexdigest()[:12]


class BatchFingerprints(TrainerCallback):
    """Wraps the train dataloader's collator (the wrapper survives `skip_first_batches` on resume: accelerate copies
    it) and appends, per batch this rank collates, {"pid", "rows"} to `<folder>/rank<r>.jsonl`."""

    def __init__(self, rank: int, folder: str):
        self.path = Path(folder) / f"rank{rank}.jsonl"

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        collate = train_dataloader.collate_fn
        path = self.path

        def recording(features):
            with path.open("a") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "rows": sorted(row_id(f) for f in features)}) + "\n")
            return collate(features)

        # accelerate's DataLoaderShard may be an adapter over a torch DataLoader (`base_dataloader`), which
        # is the one iterated: set it on both
        for loader in {id(x): x for x in (train_dataloader, getattr(train_dataloader, "base_dataloader", None)) if x
                       is not None}.values():
            loader.collate_fn = recording


def attempts(path: Path) -> list[list[list[str]]]:
    """Per attempt (worker process), the batches in order: step k of an attempt that resumed after
    checkpoint-c is its (k - c)th batch."""
    by_pid: dict[int, list] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        by_pid.setdefault(entry["pid"], []).append(entry["rows"])
    return list(by_pid.values())


@pytest.mark.timeout(900)
def test_two_ranks_share_the_grouped_order_and_the_resumed_epoch_is_the_uninterrupted_one(local_ray, tiny, tmp_path):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    cfg = train.prepare_config(config(tiny, tmp_path / "uninterrupted", use_ray=False, **GROUPING))
    run_training(cfg, callbacks=[BatchFingerprints(0, str(reference_dir))])
    (reference,) = attempts(reference_dir / "rank0.jsonl")
    # accelerate's dataloader collates one batch ahead (to see the last one coming): keep the trained ones
    assert len(reference) >= MAX_STEPS
    reference = reference[:MAX_STEPS]
    assert all(len(batch) == 4 for batch in reference)

    prints = tmp_path / "prints"
    prints.mkdir()
    _, steps, _ = run_killed(tiny, tmp_path, callbacks=[functools.partial(BatchFingerprints, folder=str(prints))],
                             **GROUPING)
    rank0, rank1 = attempts(prints / "rank0.jsonl"), attempts(prints / "rank1.jsonl")
    assert len(rank0) == len(rank1) == 2, (len(rank0), len(rank1))  # the first attempt and the restarted one
    first = list(zip(rank0[0], rank1[0]))[:KILL_STEP]  # (the batch collated ahead of the kill left out)
    second = list(zip(rank0[1], rank1[1]))[:MAX_STEPS - SAVE_STEPS]  # resumed at step 4: 3 batches skipped
    assert len(first) == KILL_STEP and len(second) == MAX_STEPS - SAVE_STEPS, (len(first), len(second))
    by_step = {k + 1: pair for k, pair in enumerate(first)}
    resumed = {SAVE_STEPS + 1 + k: pair for k, pair in enumerate(second)}
    for step, (a, b) in [*by_step.items(), *resumed.items()]:
        assert not set(a) & set(b), step  # each rank its own half
        assert sorted(a + b) == reference[step - 1], step  # together: the reference's global batch
    for step in range(SAVE_STEPS + 1, KILL_STEP + 1):
        assert resumed[step] == by_step[step], step  # re-run steps: the same rows on the same ranks
    lengths = sorted({len(set(batch)) for batch in reference})
    print(f"\n2 workers, group_by_length: rank 0 steps across attempts {steps}; {len(by_step)} batches before the "
          f"kill and {len(resumed)} after it (from step {SAVE_STEPS + 1}) all equal the uninterrupted run's; "
          f"rows per global batch {lengths}")
