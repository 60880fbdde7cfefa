"""Samplers that make training augmentation reproducible and evaluation exact under DDP.

Training: `EpochSeededSampler` is a `DistributedSampler` (so Lightning leaves it in place instead of injecting
its own) that yields `(epoch, index)` keys. The dataset seeds each sample's crop and flip from
`(seed, epoch, index)` alone, so a given seed gives the same samples whatever the number of workers, and the
same global stream of samples whatever the number of ranks (each rank takes every `world_size`-th of them).
Lightning calls `set_epoch` on it at every epoch start, which reshuffles and re-draws the augmentation.

Evaluation: `DistributedSampler` without shuffling, padded: every rank gets `ceil(N / world_size)` images
(repeating the first ones), so every rank runs the same number of validation steps and takes part in every
collective with a non-empty, same-dtype state, whatever the world size (Set5 on 8 GPUs included). The
per-image metrics (`metrics/per_image.py`) key each score by its image name and drop the repeats, so every
metric equals the single-process value. An unpadded shard instead leaves ranks with no image once the world
size exceeds the set, and one step fewer elsewhere (docs/training.md#ddp).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

from torch.utils.data import Dataset, DistributedSampler, SequentialSampler

__all__ = ["EpochSeededSampler", "evaluation_sampler"]


class EpochSeededSampler(DistributedSampler):
    """Shuffled, sharded training indices, yielded as `(epoch, index)` keys for `TrainPatchDataset`."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        for index in super().__iter__():
            yield (epoch, index)


def evaluation_sampler(
    dataset: Dataset, num_replicas: int, rank: int
) -> SequentialSampler | DistributedSampler:
    """In order on one process; under DDP a padded shard of `ceil(N / num_replicas)` images per rank.

    Rank `r` gets images `r, r + num_replicas, ...` of the set followed by its first images again, so the
    union over ranks is the whole set and the repeats are exactly what the per-image metrics de-duplicate.
    """
    if num_replicas == 1:
        return SequentialSampler(cast(Sized, dataset))
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
