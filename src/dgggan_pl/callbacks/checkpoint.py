"""Checkpoint writing that survives a kill or a full disk, and GAN-aware checkpoint selection."""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dgggan_pl.callbacks.iteration import iterations_done
from dgggan_pl.config import ConfigError
from dgggan_pl.runs import LAST_CHECKPOINT
from dgggan_pl.utils.atomic import atomic_open

log = logging.getLogger(__name__)

_WORST_SCORE = {"min": float("inf"), "max": float("-inf")}  # ModelCheckpoint's initial kth_value per mode
IF_NONE_AVAILABLE = ("error", "latest")
ITERATION = (
    "iteration"  # `{iteration}` in checkpoint file names (Lightning's `{step}` counts optimizer steps)
)


def _out_of_space(error: BaseException) -> bool:
    """Whether ENOSPC is anywhere in the chain (torch.save reports it as `inline_container.cc ... unexpected pos`,
    with the OSError of the failed write as its context)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        current = current.__cause__ or current.__context__
    return False


def _what_is_intact(path: Path) -> str:
    """What a failed write of `path` leaves to resume from, said before writing (for the disk-full message)."""
    last = path.with_name(LAST_CHECKPOINT)
    if path.is_file():
        return f"the previous {path.name} is intact"
    if last.is_file():
        return f"{last.name} is intact"
    return f"no checkpoint had been saved in {path.parent} before, so there is none to resume from"


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
        state = _what_is_intact(Path(path))
        try:
            with atomic_open(path, "wb") as file:
                torch.save(checkpoint, file)
        except Exception as error:
            if _out_of_space(error):
                raise OSError(
                    errno.ENOSPC,
                    f"no space left on device while writing checkpoint {path}: free space there or point "
                    f"paths.output_dir (hydra.run.dir) at a disk with room; {state}",
                ) from error
            raise


@dataclass(frozen=True)
class Monitor:
    """A checkpoint selection metric (`val/<Set>/<metric>`) and whether lower or higher is better."""

    key: str
    mode: str

    @property
    def metric(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def select_monitor(
    chain: Sequence[Monitor], unavailable: Mapping[str, str]
) -> tuple[Monitor | None, list[str]]:
    """The first monitor of `chain` whose metric can be computed here (None if none can), and the keys of the
    monitors skipped on the way (their reasons are logged once, by the metrics, and kept in run_info.json)."""
    skipped: list[str] = []
    for monitor in chain:
        if monitor.metric not in unavailable:
            return monitor, skipped
        skipped.append(monitor.key)
    return None, skipped


class MonitorFallbackCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that selects on the first metric of a chain that can be computed here.

    GAN experiments select on the perception index (`val/Set14/pi`, the paper's choice), then LPIPS, then NIQE
    (`fallbacks`); PSNR would pick a GAN's earliest, least adversarial checkpoint. The PSNR stage selects on PSNR.
    `unavailable` (metric -> reason) is given by `dgggan_pl.train`, computed once from `cfg.metrics`. When no
    monitor of the chain can be computed, `if_none_available: latest` keeps the latest checkpoint as the selected
    one (with a warning) and `error` refuses to start. The choice is made in `__init__`, so a resumed run restores
    the state of the same monitor.

    File names count iterations (`best-{iteration}.ckpt`). `last.ckpt` is refreshed after EVERY validation and
    at the end of training (Lightning's ModelCheckpoint only refreshes it when a new best is saved), so
    `ckpt_path=last` always resumes from the latest state.
    """

    def __init__(
        self,
        *args: Any,
        monitor: str | None = None,
        mode: str = "min",
        fallbacks: Sequence[Mapping[str, str]] = (),
        unavailable: Mapping[str, str] | None = None,
        if_none_available: str = "error",
        monitor_set: str | None = None,
        **kwargs: Any,
    ):
        if if_none_available not in IF_NONE_AVAILABLE:
            raise ValueError(
                f"callbacks.model_checkpoint.if_none_available must be one of {IF_NONE_AVAILABLE}, "
                f"got {if_none_available!r}"
            )
        chain = [Monitor(monitor, mode)] if monitor is not None else []
        chain += [Monitor(f["monitor"], f.get("mode", "min")) for f in fallbacks]
        for entry in chain:
            if entry.mode not in _WORST_SCORE:
                raise ValueError(
                    f"callbacks.model_checkpoint: mode of {entry.key} must be min or max, got {entry.mode!r}"
                )
        selected, skipped = select_monitor(chain, unavailable or {})
        if selected is None and chain and if_none_available == "error":
            raise ConfigError(
                f"callbacks.model_checkpoint: none of {', '.join(skipped)} can be computed here (see "
                "metrics_unavailable); add a computable one to callbacks.model_checkpoint.fallbacks or set "
                "callbacks.model_checkpoint.if_none_available=latest"
            )
        if skipped:
            choice = (
                f"selecting on {selected.key}" if selected else "the latest checkpoint is the selected one"
            )
            log.warning("checkpoint monitor(s) %s cannot be computed here: %s", ", ".join(skipped), choice)
        self.monitor_chain = chain
        self.monitor_set = monitor_set
        self.selected_monitor = selected
        super().__init__(  # type: ignore[misc]  # mypy cannot rule out *args filling monitor/mode
            *args,
            monitor=selected.key if selected else None,
            mode=selected.mode if selected else "min",
            **kwargs,
        )
        self._last_written_step = -1

    def selection(self) -> dict[str, Any]:
        """What selected the checkpoint, for run_info.json."""
        chosen = self.selected_monitor
        return {
            "monitor": chosen.key if chosen else None,
            "mode": chosen.mode if chosen else None,
            "rule": "best" if chosen else "latest",
            "chain": [m.key for m in self.monitor_chain],
        }

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates[ITERATION] = torch.tensor(iterations_done(trainer.lightning_module, trainer))
        return candidates

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _refresh_last(self, trainer: Trainer) -> None:
        stale = self._last_written_step != trainer.global_step
        if (
            self.save_last
            and stale
            and not (trainer.sanity_checking or getattr(trainer, "fast_dev_run", False))
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)
