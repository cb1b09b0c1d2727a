"""Seeded length-grouped sampling for preference data (`train_sampling_strategy: group_by_length`).

Hugging Face's `LengthGroupedSampler` reads one `input_ids` column (our pairwise rows have two) and draws
its permutation from a generator it is given once, so its order depends on how often that generator was
used before. Here the order of an epoch is a pure function of (lengths, batch size, seed, epoch): every
Ray worker / DDP rank computes the same order, a run resumed from a checkpoint replays the same epoch
order (so skipping the trained batches lands on the right examples), and the global torch RNG is never
touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

# Per stage, the tokenized columns padded in one forward batch with the row: a pair's chosen and
# rejected rows share one (2B, L) batch; a kto completion and its KL row are padded in two blocks,
# whose sizes both follow the row.
LENGTH_COLUMNS = {
    "dpo": ("chosen_input_ids", "rejected_input_ids"),
    "kto": ("input_ids", "kl_input_ids"),
}


def padded_lengths(dataset, stage: str) -> list[int]:
    """Per row, max(len) over the stage's `LENGTH_COLUMNS`: the length the row makes its batch pad to.

    Read with pyarrow's `list_value_length` on the Arrow columns, without decoding the token lists and
    without adding a dataset column (the dataset fingerprint feeds the reference cache key).
    """
    import datasets
    import pyarrow.compute as pc

    columns = LENGTH_COLUMNS[stage]
    if not isinstance(dataset, datasets.Dataset):
        return [max(len(row[c]) for c in columns) for row in dataset]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"group_by_length: the {stage} training data lacks columns {missing}")
    # select_columns is free; the arrow view then gathers only these columns (and honours an indices
    # mapping left by select/train_test_split, which `dataset.data` alone would not).
    table = dataset.select_columns(list(columns)).with_format("arrow")[:]
    lengths = [pc.list_value_length(table[c]) for c in columns]
    longest = lengths[0]
    for other in lengths[1:]:
        longest = pc.max_element_wise(longest, other)
    return longest.to_pylist()


def grouping_batch_size(args) -> int:
    """Examples per optimizer step over all workers: per-device batch x accumulation x world size.

    Hugging Face groups by `train_batch_size * gradient_accumulation_steps`, which is right for one
    process. Under DDP, accelerate's `BatchSamplerShard` deals consecutive per-device batches of this
    sampler's order to ranks in turn (batch i to rank i % world_size), so one optimizer step consumes
    world_size * accumulation consecutive per-device batches. Mega-batches that are a multiple of that
    keep every step inside one sorted mega-batch: each rank's batch is of similar lengths (less padding),
    and the ranks of one step get similar lengths too, so no rank waits at the gradient all-reduce for
    a rank holding the long examples. With one worker this equals Hugging Face's choice.
    """
    return args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


class SeededLengthGroupedSampler(Sampler[int]):
    """Indices in mega-batches sorted by length (`get_length_grouped_indices`), permuted per epoch by a
    fresh `torch.Generator().manual_seed(seed + epoch)`.

    The Trainer (and accelerate's `DataLoaderShard`) call `set_epoch(epoch)` before each epoch. There is
    deliberately no `generator` attribute: accelerate would replace a None one with a randomly seeded one
    and synchronize it across ranks, which is not needed when the order is a function of the seed.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self.lengths:
            return iter([])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
