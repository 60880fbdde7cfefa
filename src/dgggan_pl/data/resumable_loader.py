"""Exact mid-epoch resume: a training loader that Lightning checkpoints and restores.

Lightning's fit loop saves `state_dict()` of every training dataloader that has `state_dict`/`load_state_dict`
(key `loops.fit_loop.state_dict.combined_loader` of the checkpoint) and calls `load_state_dict` on resume before
the first `iter()`. A plain `DataLoader` restarts the interrupted epoch from its first batch, so that epoch's
first batches would be trained on twice. `ResumableLoader` records how many batches of the current epoch it has
handed to the main process (not what workers prefetched), and on resume its sampler drops exactly those samples
as indices, before any image is read. Each DDP rank skips within its own shard; all ranks consume the same
number of batches per step, so rank 0's saved count holds for every rank.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from dgggan_pl.data.seeded_samplers import EpochSeededSampler

__all__ = ["ResumableLoader", "SkippingEpochSampler"]


class SkippingEpochSampler(EpochSeededSampler):
    """`EpochSeededSampler` whose next pass can start `n` samples into the epoch's (sharded) order.

    Skipping here drops `(epoch, index)` keys before they reach the dataset, so skipped images are never read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip_next_pass = 0

    def skip_next_pass(self, num_samples: int) -> None:
        """Make only the next `__iter__` start `num_samples` in (one-shot, so later epochs start at 0)."""
        if not 0 <= num_samples <= self.num_samples:
            raise ValueError(f"cannot skip {num_samples} of this rank's {self.num_samples} samples per epoch")
        self._skip_next_pass = num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip, self._skip_next_pass = self._skip_next_pass, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableLoader(DataLoader):
    """Training `DataLoader` with `state_dict()`/`load_state_dict()` for Lightning's exact mid-epoch resume.

    Build it with `sampler=SkippingEpochSampler(...)` and `drop_last=True` (every batch full, so a batch count
    is a sample count). `len()` stays the full epoch: Lightning resumes its own batch counter at the saved
    position and expects the remaining batches from this loader.

    The state is `{"epoch", "batches"}` (batches of that epoch handed out) plus the layout that makes the count
    meaningful (`batch_size`, `num_replicas`, `batches_per_epoch`); a pending skip under a different layout is an
    error, because those batches would be different samples.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SkippingEpochSampler) or not self.drop_last:
            raise ValueError("ResumableLoader needs sampler=SkippingEpochSampler(...) and drop_last=True")
        self._skipping: SkippingEpochSampler = self.sampler  # the same object, typed (DataLoader's is not)
        self._epoch: int | None = None  # epoch of the current (or last) pass; None before the first
        self._batches = 0
        self._pending: tuple[int, int] | None = None  # (epoch, batches) loaded, applied by the next __iter__

    def _layout(self) -> dict[str, int]:
        assert self.batch_size is not None  # drop_last with a batch size: checked in __init__
        return {
            "batch_size": int(self.batch_size),
            "num_replicas": int(self._skipping.num_replicas),
            "batches_per_epoch": len(self),
        }

    def state_dict(self) -> dict[str, int]:
        """Position in the current epoch: batches already yielded to the caller (a pending resume if not started)."""
        if self._pending is not None:
            epoch, batches = self._pending
        elif self._epoch is None:
            epoch, batches = int(self._skipping.epoch), 0
        else:
            epoch, batches = self._epoch, self._batches
        return {"epoch": epoch, "batches": batches, **self._layout()}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume after `state_dict["batches"]` batches of `state_dict["epoch"]`; a finished epoch resumes at the
        start of the next one."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= state_dict["batches_per_epoch"]:
            epoch, batches = epoch + 1, 0
        layout = self._layout()
        saved = {key: int(state_dict[key]) for key in layout}
        if batches and saved != layout:
            raise ValueError(
                f"cannot resume mid-epoch: the checkpoint's training loader had {saved}, this run has {layout}. "
                "Resume with the same data.batch_size, data.samples_per_epoch and number of devices, or start a "
                "new run from the checkpoint's weights"
            )
        self._skipping.set_epoch(epoch)
        self._pending = (epoch, batches)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator, not DataLoader's iterator class
        # A generator: nothing (workers included) starts until the first batch is requested, after Lightning's
        # `set_epoch`, so the sampler always reads the right epoch.
        epoch = int(self._skipping.epoch)
        skip = 0
        if self._pending is not None:
            pending_epoch, skip = self._pending
            self._pending = None
            if skip and pending_epoch != epoch:
                raise RuntimeError(
                    f"the checkpoint's training loader stopped in epoch {pending_epoch}, but the trainer resumed "
                    f"epoch {epoch}: the checkpoint's loop and loader states disagree; resume from an unmodified "
                    "checkpoint written by this version of dgggan_pl and Lightning"
                )
        self._epoch, self._batches = epoch, skip
        assert self.batch_size is not None
        self._skipping.skip_next_pass(skip * int(self.batch_size))
        for batch in super().__iter__():
            self._batches += 1
            yield batch
