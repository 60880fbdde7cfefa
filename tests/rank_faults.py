"""A failure that only one rank of a DDP run meets (a file only that rank reads, a device error), injected as a
callback: `+callbacks.fault={_target_:rank_faults.FailOnRank,rank:1,batch:2}` with this folder on PYTHONPATH."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, Trainer

MESSAGE = "injected failure on rank {rank} at batch {batch}"


class FailOnRank(Callback):
    def __init__(self, rank: int, batch: int) -> None:
        self.rank, self.batch = rank, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and batch_idx == self.batch:
            raise RuntimeError(MESSAGE.format(rank=self.rank, batch=self.batch))
