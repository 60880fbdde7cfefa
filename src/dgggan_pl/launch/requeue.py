"""A SLURM job that times out or is preempted continues from its own last.ckpt when submitit requeues it.

submitit signals the job (USR2 by default, `SUBMITIT_PREEMPT_SIGNAL`) `signal_delay_s` before its time limit
or on preemption; its handler calls the launcher's `checkpoint()` for the arguments of the requeued job and
exits. Two things are added here: the handler is deferred while a Trainer fits, so that `RequeueCheckpoint`
first saves `last.ckpt` at the next batch end (all ranks agree on that batch); and the requeued job's
overrides get `ckpt_path=last` once that file exists (a fresh job cannot have it: `ckpt_path=last` refuses
to start without one).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

# The callback entry the SLURM launchers add to every job (excluded from job folder names in conf/hydra).
CALLBACK_KEY = "callbacks.requeue_checkpoint"
CALLBACK_OVERRIDE = f"++{CALLBACK_KEY}={{_target_:{__name__}.RequeueCheckpoint}}"
RESUME_KEYS = ("ckpt_path", "resume")
RESUME_OVERRIDE = "ckpt_path=last"

_Handler = Callable[[int, FrameType | None], Any]


class _Deferred:
    """Process-wide state: the requeue signal received while fitting, and submitit's own handler."""

    signum: int | None = None
    fitting: bool = False
    handler: _Handler | None = None


def install_deferred_handler(signum: int) -> None:
    """In the job process, after submitit set its handler for `signum`: defer it while a Trainer fits."""
    previous = signal.getsignal(signum)
    if not callable(previous) or getattr(previous, "_deferred", False):
        return
    _Deferred.handler = previous

    def deferred(received: int, frame: FrameType | None) -> None:
        if _Deferred.fitting:
            log.warning(f"Received {signal.Signals(received).name}: saving last.ckpt at the next batch end")
            _Deferred.signum = received
        else:
            previous(received, frame)

    deferred._deferred = True  # type: ignore[attr-defined]
    signal.signal(signum, deferred)


class RequeueCheckpoint(Callback):
    """Saves last.ckpt at the first batch end after the requeue signal, then runs submitit's requeue."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _Deferred.fitting = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _Deferred.fitting = False
        self._run_pending()  # a signal during the last batch: requeue now (the job then only tests)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        _Deferred.fitting = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        pending = _Deferred.signum is not None
        if trainer.world_size > 1:  # ranks may get the signal a batch apart; any one decides for all
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if not pending:
            return
        path = last_checkpoint_path(trainer)
        # Registered as the checkpoint callback's own last.ckpt (part of the saved state): otherwise the resumed
        # job finds a last.ckpt it did not write and saves its final one as last-v1.ckpt, leaving last.ckpt
        # (what run_info and `ckpt_path=last` read) at the requeue step.
        trainer.checkpoint_callback.last_model_path = str(path)  # type: ignore[union-attr]
        trainer.save_checkpoint(path)
        log.warning(
            f"saved {path} at optimizer step {trainer.global_step}; handing over to submitit's requeue"
        )
        _Deferred.fitting = False
        self._run_pending(_Deferred.signum or signal.SIGUSR2)

    @staticmethod
    def _run_pending(signum: int | None = None) -> None:
        signum = signum or _Deferred.signum
        _Deferred.signum = None
        if signum is not None and _Deferred.handler is not None:
            _Deferred.handler(signum, None)  # rank 0: checkpoint(), requeue, exit; other ranks: returns


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where the checkpoint callback keeps last.ckpt (`ckpt_path=last` reads it from there)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
        raise RuntimeError("requeue needs a ModelCheckpoint with a dirpath (callbacks.model_checkpoint)")
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def resume_overrides(overrides: Sequence[str], has_last_checkpoint: bool) -> list[str]:
    """The requeued job's overrides: `ckpt_path=last` instead of any earlier resume choice, once last.ckpt exists."""
    if not has_last_checkpoint:
        return list(overrides)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RESUME_KEYS]
    return [*kept, RESUME_OVERRIDE]
