"""A failure that only one rank of a DDP run meets (a file only that rank reads, a device error), injected as a
callback: `+callbacks.fault={_target_:rank_faults.FailOnRank,rank:1,batch:2}` with this folder on PYTHONPATH.
`KillOnRank` is a rank that dies without a word (SIGKILL: out of memory, a crash below Python)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from lightning.pytorch import Callback, Trainer

MESSAGE = "injected failure on rank {rank} at batch {batch}"


class FailOnRank(Callback):
    """`when`/`equals` limit it to some jobs of a sweep: `when:${ablation.name},equals:no_grad` fails only there."""

    def __init__(self, rank: int, batch: int, when: object = None, equals: object = None) -> None:
        self.rank, self.batch, self.armed = rank, batch, when == equals

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.armed and trainer.global_rank == self.rank and batch_idx == self.batch:
            raise RuntimeError(MESSAGE.format(rank=self.rank, batch=self.batch))


class KillOnRank(Callback):
    """Rank `rank` kills itself at batch `batch`; the other ranks then wait `others_wait_s` outside any
    collective, so only a watcher of the processes (not a failing all-reduce) can notice the death."""

    def __init__(self, rank: int, batch: int, others_wait_s: float) -> None:
        self.rank, self.batch, self.others_wait_s = rank, batch, others_wait_s

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx != self.batch:
            return
        if trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.others_wait_s)
