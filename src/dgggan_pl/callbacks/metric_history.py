"""Validation metrics after every validation, as one JSON file: the learning curve of a run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from dgggan_pl.utils.atomic import write_text_atomic


class MetricHistory(Callback):
    """Appends `{"iteration", "seconds", <val/... metrics>}` after each validation and rewrites `path` atomically.

    `seconds` is the training wall time so far (validation excluded), so curves can be read against a budget.
    """

    def __init__(self, path: str, prefix: str = "val/") -> None:
        self.path = Path(path)
        self.prefix = prefix
        self.rows: list[dict[str, Any]] = []
        self._train_seconds = 0.0
        self._batch_start: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._batch_start is not None:
            self._train_seconds += time.perf_counter() - self._batch_start

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(self.prefix) and math.isfinite(float(value))
        }
        iteration = int(getattr(pl_module, "iteration", trainer.global_step))
        self.rows.append({"iteration": iteration, "seconds": round(self._train_seconds, 1), **metrics})
        write_text_atomic(self.path, json.dumps(self.rows, indent=1) + "\n")
