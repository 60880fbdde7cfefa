"""A torchmetrics base for "mean over images of a per-image score", exact under DDP.

Papers average per-image values per benchmark set. Lightning's `DistributedSampler` pads the validation set
with repeated images when its size is not divisible by the world size, so a plain sum + count would count
those twice. Here each image's score is stored with a key (a stable 63-bit hash of its name) in `cat`-reduced
list states; `compute` drops repeated keys, then averages the scores in sorted order, so the result is the same
bit for bit whether images come one by one, in batches, or spread over ranks.
A rank that scored no image still joins the gather with empty states of the right dtypes (float64 scores,
int64 keys): torchmetrics' own placeholder is float32 for both, which gloo refuses ("collective mismatch")
and NCCL gathers as garbage or waits on forever.
Without names (`update(sr, hr)`), nothing can be deduplicated: run validation unpadded in that case.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

NO_KEY = -1  # images updated without a name; never deduplicated
_KEY_MASK = (1 << 63) - 1


def name_key(name: str) -> int:
    """A stable non-negative int64 key of an image name (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _KEY_MASK


def name_keys(names: Sequence[str] | None, count: int, device: torch.device) -> Tensor:
    if names is None:
        return torch.full((count,), NO_KEY, dtype=torch.int64, device=device)
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for a batch of {count} images")
    return torch.tensor([name_key(n) for n in names], dtype=torch.int64, device=device)


def unique_scores(scores: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Drop repeated keyed entries (keep one per key), keep every unkeyed one; return sorted by (key, score)."""
    order = torch.argsort(scores, stable=True)
    scores, keys = scores[order], keys[order]
    order = torch.argsort(keys, stable=True)
    scores, keys = scores[order], keys[order]
    keyed = keys != NO_KEY
    first = torch.ones_like(keyed)
    first[1:] = keys[1:] != keys[:-1]
    keep = ~keyed | first
    return scores[keep], keys[keep]


class PerImageMetric(Metric):
    """Mean of a per-image score over a set. Subclasses implement `score(sr, hr) -> (B,)`.

    `update(sr, hr, names=None)`: `(B, 3, H, W)` float in [0, 1]; pass the batch's image names to make the
    result immune to the distributed sampler's padding.
    """

    full_state_update = False
    is_differentiable = False
    # torchmetrics list states (tensors once a DDP sync has concatenated them), declared for the type checker
    scores: list[Tensor]
    keys: list[Tensor]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("keys", default=[], dist_reduce_fx="cat")

    @abstractmethod
    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        """Per-image values `(B,)` of `(B, 3, H, W)` images in [0, 1]."""

    def update(self, sr: Tensor, hr: Tensor, names: Sequence[str] | None = None) -> None:
        if sr.shape != hr.shape:
            raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} must have the same shape")
        values = self.score(sr.detach(), hr.detach()).to(torch.float64).reshape(-1)
        self.scores.append(values)
        self.keys.append(name_keys(names, values.numel(), values.device))

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        """As torchmetrics', with empty states of this metric's own dtypes on a rank without images."""
        if isinstance(self.scores, list) and not self.scores:
            self.scores = [torch.empty(0, dtype=torch.float64, device=self.device)]
            self.keys = [torch.empty(0, dtype=torch.int64, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)

    def per_image(self) -> tuple[Tensor, Tensor]:
        """`(scores, keys)` after deduplication (synchronised across ranks when called from `compute`)."""
        if isinstance(self.scores, list) and not self.scores:  # after a DDP sync the states are tensors
            raise RuntimeError(f"{type(self).__name__}: compute() called before any update()")
        return unique_scores(dim_zero_cat(self.scores), dim_zero_cat(self.keys))

    def compute(self) -> Tensor:
        scores, _ = self.per_image()
        return scores.mean()
