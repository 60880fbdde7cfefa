"""Checkpoint writing that survives a kill, and checkpoint selection that survives a missing metric."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dgggan_pl.utils.atomic import atomic_open

log = logging.getLogger(__name__)

_WORST_SCORE = {"min": float("inf"), "max": float("-inf")}  # ModelCheckpoint's initial kth_value per mode


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temp file in the target folder, fsync, then `os.replace`.

    A kill at any point leaves either the previous file or the new one under the final name, never a
    truncated checkpoint (local paths; `last.ckpt` is overwritten on every validation).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        with atomic_open(path, "wb") as file:
            torch.save(checkpoint, file)


class MonitorFallbackCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose monitor falls back (with a warning) when its metric cannot be computed here.

    The default monitor is the perception index (`val/Set14/pi`), which needs the Ma et al. model; where the
    metrics backend reports it unavailable, `fallback_monitor`/`fallback_mode` are used instead, decided once
    at setup (before any checkpoint state is restored, so resuming sees the same monitor).

    `last.ckpt` is refreshed after EVERY validation and at the end of training (Lightning's ModelCheckpoint
    only refreshes it when a new best is saved), so `ckpt_path=last` always resumes from the latest state.
    """

    def __init__(
        self, *args: Any, fallback_monitor: str | None = None, fallback_mode: str = "max", **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.fallback_monitor = fallback_monitor
        self.fallback_mode = fallback_mode
        self._last_written_step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor is not None and hasattr(pl_module, "unavailable_metrics"):
            metric = self.monitor.rsplit("/", 1)[-1]
            reason = pl_module.unavailable_metrics().get(metric)
            if reason is not None:
                if self.fallback_monitor is None:
                    raise ValueError(
                        f"callbacks.model_checkpoint.monitor={self.monitor} cannot be computed ({reason}); "
                        "set callbacks.model_checkpoint.fallback_monitor or another monitor"
                    )
                log.warning(
                    "checkpoint monitor %s is unavailable (%s); selecting checkpoints on %s (%s) instead",
                    self.monitor,
                    reason,
                    self.fallback_monitor,
                    self.fallback_mode,
                )
                if self.fallback_mode not in _WORST_SCORE:
                    raise ValueError(f"fallback_mode must be min or max, got {self.fallback_mode!r}")
                self.monitor, self.mode = self.fallback_monitor, self.fallback_mode
                self.kth_value = torch.tensor(_WORST_SCORE[self.fallback_mode])
        super().setup(trainer, pl_module, stage)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _refresh_last(self, trainer: Trainer) -> None:
        stale = self._last_written_step != trainer.global_step
        if self.save_last and stale and not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)
