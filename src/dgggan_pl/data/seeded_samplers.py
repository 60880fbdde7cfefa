"""Samplers that make training augmentation reproducible and evaluation exact under DDP.

Training: `EpochSeededSampler` is a `DistributedSampler` (so Lightning leaves it in place instead of injecting
its own) that yields `(epoch, index)` keys. The dataset seeds each sample's crop and flip from
`(seed, epoch, index)` alone, so a given seed gives the same samples whatever the number of workers, and the
same global stream of samples whatever the number of ranks (each rank takes every `world_size`-th of them).
Lightning calls `set_epoch` on it at every epoch start, which reshuffles and re-draws the augmentation.

Evaluation: Lightning's `UnrepeatedDistributedSampler` shards whole images without the padding that
`DistributedSampler` adds, so no image is scored twice when per-image metrics are reduced across ranks
(a rank may get one image fewer, or none for a 5-image set on 8 GPUs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
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
    """In order on one process; an unpadded shard per rank under DDP (each image exactly once overall)."""
    if num_replicas == 1:
        return SequentialSampler(cast(Sized, dataset))
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
