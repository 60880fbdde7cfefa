"""A SLURM job that times out, is preempted or requeued continues from its own last.ckpt when it runs again.

submitit signals the job (USR2 by default, `SUBMITIT_PREEMPT_SIGNAL`) `signal_delay_s` before its time limit
(and on preemption where the site sets `SlurmctldParameters=preempt_send_user_signal`); its handler calls the
launcher's `checkpoint()` for the arguments of the requeued job, requeues it and exits. `scontrol requeue` and
default preemption send SIGTERM instead and requeue the job themselves. Added here: both signals are deferred
while a Trainer fits, so that `RequeueCheckpoint` first saves `last.ckpt` at the next batch end (all ranks agree
on that batch) and the job hands over only after that batch's metrics are logged; and the requeued job's
overrides get `ckpt_path=last` once that file exists (a fresh job cannot have it: `ckpt_path=last` refuses
to start without one).
"""

from __future__ import annotations

import contextlib
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
    saved_step: int | None = None  # last.ckpt written for the pending signal, hand-over still due
    stop_signal: int | None = None  # SIGTERM received in this job (SLURM requeue, preemption or scancel)
    requeued: str | None = None  # why this process ends for a requeue (read by the run record)


def install_deferred_handler(signum: int) -> None:
    """In the job process, after submitit set its handler for `signum`: defer it while a Trainer fits.

    USR2 (time limit, or preemption where the site sends the user signal) is submitit's checkpoint-and-requeue.
    SIGTERM is what `scontrol requeue` and preemption send by default, and scancel too: SLURM itself then
    requeues (or ends) the job, so the job saves last.ckpt and writes the requeued job's arguments, nothing more.
    """
    previous = signal.getsignal(signum)
    if not callable(previous) or getattr(previous, "_deferred", False):
        return
    if signum != signal.SIGTERM:
        _Deferred.handler = previous

    def deferred(received: int, frame: FrameType | None) -> None:
        if received == signal.SIGTERM:
            _Deferred.stop_signal = received
        if _Deferred.fitting:
            log.warning(f"Received {signal.Signals(received).name}: saving last.ckpt at the next batch end")
            _Deferred.signum = received
        else:
            previous(received, frame)

    deferred._deferred = True  # type: ignore[attr-defined]
    signal.signal(signum, deferred)


class RequeueCheckpoint(Callback):
    """Saves last.ckpt at the first batch end after a requeue signal; hands over to submitit's requeue once that
    batch's metrics are logged (at the next batch start, validation, the end of training or an exception)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _Deferred.fitting = True  # from the sanity check on: a signal then waits for the first batch end

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _Deferred.fitting = False
        self._hand_over()  # a signal during the last batch: requeue now (the job then only tests)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning ends the batch a SIGTERM arrived in with SIGTERMException, after its on_train_batch_end.
        _Deferred.fitting = False
        if _Deferred.signum == signal.SIGTERM and _Deferred.saved_step is None:
            self._save(trainer)
        if _Deferred.signum == signal.SIGTERM:
            self._hand_over(exiting=True)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._hand_over()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._hand_over()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        pending = _Deferred.signum is not None and _Deferred.saved_step is None
        if trainer.world_size > 1:  # ranks may get the signal a batch apart; any one decides for all
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if pending:
            self._save(trainer)

    @staticmethod
    def _save(trainer: Trainer) -> None:
        path = last_checkpoint_path(trainer)
        # Registered as the checkpoint callback's own last.ckpt (part of the saved state): otherwise the resumed
        # job finds a last.ckpt it did not write and saves its final one as last-v1.ckpt, leaving last.ckpt
        # (what run_info and `ckpt_path=last` read) at the requeue step.
        trainer.checkpoint_callback.last_model_path = str(path)  # type: ignore[union-attr]
        trainer.save_checkpoint(path)
        _Deferred.saved_step = trainer.global_step
        _Deferred.signum = _Deferred.signum or signal.SIGUSR2  # another rank's signal decided
        log.warning(
            f"saved {path} at optimizer step {trainer.global_step}; handing over to submitit's requeue"
        )

    @staticmethod
    def _hand_over(exiting: bool = False) -> None:
        """Rank 0: write the requeued job's arguments (`checkpoint()`) and, for USR2, requeue; every rank exits.

        After SIGTERM SLURM requeues the job itself (or it was cancelled): submitit's `checkpoint_and_exit` only
        writes the arguments. When `exiting` (Lightning's SIGTERMException is on its way) nothing is raised here.
        """
        signum, step = _Deferred.signum, _Deferred.saved_step
        if signum is None or (step is None and _Deferred.fitting) or _Deferred.handler is None:
            return
        _Deferred.signum, _Deferred.fitting = None, False
        name = signal.Signals(signum).name
        where = f"last.ckpt at optimizer step {step}" if step is not None else "no checkpoint"
        _Deferred.requeued = f"{name} received; {where}"
        if signum != signal.SIGTERM:
            try:
                _Deferred.handler(signum, None)  # rank 0: checkpoint(), requeue, exit; other ranks: returns
            except SystemExit:
                raise
            except BaseException:  # not requeued (e.g. max_num_timeout reached): an ordinary failure
                _Deferred.requeued = None
                raise
            return
        owner = getattr(_Deferred.handler, "__self__", None)
        with contextlib.suppress(SystemExit):  # it exits after writing; the exit is decided here
            owner.checkpoint_and_exit(signum, None)  # type: ignore[union-attr]
        if not exiting:
            raise SystemExit(128 + signum)


def requeue_reason() -> str | None:
    """Why this job process is ending for a requeue (None otherwise): its run record says `requeued`."""
    return _Deferred.requeued


def requeue_left_to_slurm() -> bool:
    """Whether SLURM, not submitit, requeues this job (after SIGTERM: `scontrol requeue` or preemption, unless it
    was scancel): the run record then asks SLURM which it was. After USR2 submitit has requeued it already."""
    return _Deferred.requeued is not None and _Deferred.requeued.startswith(signal.Signals.SIGTERM.name)


def exit_code_after_stop() -> int | None:
    """128 + SIGTERM when this job received SIGTERM (its exit must not read as success), else None."""
    return 128 + _Deferred.stop_signal if _Deferred.stop_signal is not None else None


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
