"""Lightning callbacks that the GPU check adds to `train()` through the config (`+callbacks.<name>=...`).

`train()` builds them from the config, so the check never holds the objects: each one writes what it measured to
a JSON file that the phase reads back afterwards.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dgggan_pl.module import DGGGANModule
from dgggan_pl.utils.atomic import write_json_atomic

SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")'s message


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a host clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock(Callback):
    """Iterations/s end to end (data loading included) after `warmup` iterations, stopping at `budget_s`.

    The clock starts at the end of iteration `warmup` and stops at the end of the last one, so every later
    iteration's batch fetch, host-to-device copy and both optimizer steps are inside it; the device is
    synchronised only at those two points. The phase's time guard: after `budget_s` seconds from the start of
    fit (set-up, compilation and warm-up included) the trainer stops after the current iteration. Writes
    `{"iterations", "timed_iterations", "seconds", "iterations_per_s", "peak_memory_gib", ...}` to `path`.
    """

    def __init__(self, path: str, budget_s: float, warmup: int = 1) -> None:
        self.path = Path(path)
        self.budget_s = float(budget_s)
        self.warmup = int(warmup)
        self._fit_start = 0.0
        self._timed_start: float | None = None
        self._iterations = 0
        self._stopped_by_budget = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._fit_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._iterations += 1
        if self._iterations == self.warmup:
            synchronize(pl_module.device)
            self._timed_start = time.perf_counter()
        if time.perf_counter() - self._fit_start > self.budget_s:
            self._stopped_by_budget = True
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        synchronize(pl_module.device)
        end = time.perf_counter()
        timed = self._iterations - self.warmup if self._timed_start is not None else 0
        seconds = end - self._timed_start if self._timed_start is not None else 0.0
        record: dict[str, Any] = {
            "iterations": self._iterations,
            "timed_iterations": timed,
            "seconds": round(seconds, 3),
            "iterations_per_s": timed / seconds if timed > 0 and seconds > 0 else None,
            "fit_seconds": round(end - self._fit_start, 3),
            "stopped_by_budget": self._stopped_by_budget,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "process_group": _process_group_backend(),
        }
        if pl_module.device.type == "cuda":
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            record["peak_reserved_gib"] = torch.cuda.max_memory_reserved(pl_module.device) / 2**30
        write_json_atomic(self.path, record)


def _process_group_backend() -> str | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return str(torch.distributed.get_backend())
    return None


class ChannelsLast(Callback):
    """Trains in channels_last: the module, the loss networks kept outside it (VGG19) and every batch image.

    `DGGGANModule` keeps its loss networks out of the module tree, so `module.to(memory_format=...)` alone
    would leave the perceptual loss in the default layout.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, DGGGANModule):
            raise TypeError(
                f"ChannelsLast converts a DGGGANModule's loss networks, got {type(pl_module).__name__}"
            )
        pl_module.to(memory_format=torch.channels_last)
        for term in pl_module.objective.terms.values():
            if isinstance(term, torch.nn.Module):
                term.to(memory_format=torch.channels_last)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any
    ) -> None:
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                batch[key] = value.contiguous(memory_format=torch.channels_last)


class SyncCounter(Callback):
    """Host synchronisations per iteration, counted by `torch.cuda.set_sync_debug_mode("warn")`.

    Counting starts after `warmup` iterations and covers the whole iteration (hooks, both optimizer steps,
    logging). On a CPU there is no device to wait for: the count is recorded as null ("n/a").
    Writes `{"iterations", "syncs", "syncs_per_iteration", "examples"}` to `path`.
    """

    def __init__(self, path: str, warmup: int = 1) -> None:
        self.path = Path(path)
        self.warmup = int(warmup)
        self.counts: list[int] = []
        self.examples: dict[str, int] = {}
        self._seen = 0
        self._catcher: warnings.catch_warnings | None = None
        self._records: list[warnings.WarningMessage] | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._seen < self.warmup or pl_module.device.type != "cuda":
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._seen += 1
        if self._catcher is None or self._records is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        records, self._records = self._records, None
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        self.counts.append(count_sync_warnings(records, self.examples))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = self.counts if pl_module.device.type == "cuda" else None
        write_json_atomic(
            self.path,
            {
                "iterations": len(self.counts),
                "syncs": counts,
                "syncs_per_iteration": sum(counts) / len(counts) if counts else None,
                "examples": self.examples,
            },
        )


def count_sync_warnings(records: list[warnings.WarningMessage], examples: dict[str, int]) -> int:
    """Number of synchronisation warnings among `records`; `examples` counts them by the code line that synced."""
    count = 0
    for record in records:
        if SYNC_WARNING not in str(record.message):
            continue
        count += 1
        where = f"{Path(record.filename).name}:{record.lineno}"
        examples[where] = examples.get(where, 0) + 1
    return count


class KillAfterCheckpoint(Callback):
    """Kills its own process with SIGKILL at the first iteration >= `iteration` once `checkpoint` exists.

    The GPU check's resume phase: a real `kill -9` after a validation saved `last.ckpt`, mid-run.
    """

    def __init__(self, checkpoint: str, iteration: int) -> None:
        self.checkpoint = Path(checkpoint)
        self.iteration = int(iteration)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if int(getattr(pl_module, "iteration", 0)) >= self.iteration and self.checkpoint.is_file():
            os.kill(os.getpid(), signal.SIGKILL)
