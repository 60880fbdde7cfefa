"""One requeue mechanism for every SLURM launch: every rank saves last.ckpt at the same step, exits, and the
job's next attempt resumes from it.

SLURM signals every task of a job:
- USR2 (`--signal=USR2@<seconds>` before the time limit: hydra/launcher=slurm's and scripts/sbatch_train.sh's),
  or USR1 (the signal Lightning's docs suggest): the job must requeue itself. Under hydra/launcher=slurm
  submitit's handler does it (and counts time-outs, `max_num_timeout`); in a plain `sbatch` + `srun` job rank 0
  runs `scontrol requeue` (SLURM does not requeue a job at its time limit by itself).
- SIGTERM (`scontrol requeue`, preemption, scancel): SLURM requeues (or ends) the job itself; the job only saves
  and exits 143, and its run record asks SLURM which it was (`slurm_queue.this_job_requeued`).

While a Trainer fits, each of these signals is deferred. `RequeueCheckpoint` agrees across ranks at every batch
end (one max all-reduce of the pending signal) so that all ranks save last.ckpt at the same optimizer step even
when the signal reaches them a batch apart, and they all hand over once that batch's metrics are logged (the
next batch start, validation start or end of training). A signal during validation ends it at the next
validation batch (SLURM's KillWait, 30 s by default, can be shorter than a validation). Resuming is the run
folder's business: `ckpt_path=last` in the requeued submitit job, the job's own `slurm-<id>` folder for
`sbatch` (`dgggan_pl.runs`).

Lightning's own SLURM requeue (`SLURMEnvironment(auto_requeue=True)`) is kept out, so that one mechanism acts:
it would save `hpc_ckpt_<n>.ckpt` from inside its USR1 handler on each rank at whatever point the signal
finds it, then requeue a second time. It never arms because these handlers hold USR1 and USR2 first (Lightning
registers its USR1 handler only on a free signal). Its SIGTERM handler is replaced while fitting: in Lightning
2.6 it calls `torch.distributed.broadcast` inside the signal handler, which pairs with whatever collective
another rank is in at that moment.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dgggan_pl.distributed.cluster import cluster_environment
from dgggan_pl.launch import slurm_queue
from dgggan_pl.utils.exits import Interrupted

log = logging.getLogger(__name__)

# The callback entry the SLURM launchers add to every job (excluded from job folder names in conf/hydra).
CALLBACK_KEY = "callbacks.requeue_checkpoint"
CALLBACK_OVERRIDE = f"++{CALLBACK_KEY}={{_target_:{__name__}.RequeueCheckpoint}}"
RESUME_KEYS = ("ckpt_path", "resume")
RESUME_OVERRIDE = "ckpt_path=last"
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # the job requeues itself
STOP_SIGNAL = signal.SIGTERM  # SLURM requeues (or cancels) the job itself
DEFERRED_SIGNALS = (*REQUEUE_SIGNALS, STOP_SIGNAL)

_Action = Callable[[int, FrameType | None], Any]  # (signal, frame), as a signal handler


class _Deferred:
    """Process-wide state: the signal received while fitting, and how this process hands over."""

    signum: int | None = None  # received (or agreed on) while fitting, not handed over yet
    fitting: bool = False
    stopping: bool = False  # handed over: the process is ending, later signals change nothing
    aborting: bool = False  # a stop raised on every rank at the same validation batch (saved in on_exception)
    saved_step: int | None = None  # last.ckpt written for the pending signal, hand-over still due
    stop_signal: int | None = None  # SIGTERM received in this job (SLURM requeue, preemption or scancel)
    requeued: str | None = None  # why this process ends for a requeue (read by the run record)
    rank: int = 0
    requeue: _Action | None = None  # rank 0 after a requeue signal; None: not armed (no SLURM job)
    write_arguments: _Action | None = None  # rank 0 after SIGTERM (submitit: the requeued job's arguments)
    outside_fit: Mapping[int, Any] | None = None  # submitit's own handlers, for signals while no Trainer fits


def _on_signal(received: int, frame: FrameType | None) -> None:
    if received == STOP_SIGNAL:
        _Deferred.stop_signal = received
    if _Deferred.stopping:
        return
    if _Deferred.fitting:
        log.warning(f"Received {signal.Signals(received).name}: saving last.ckpt at the next batch end")
        if _Deferred.signum != STOP_SIGNAL:  # SLURM is ending the job: its SIGTERM decides over a USR signal
            _Deferred.signum = received
        return
    previous = (_Deferred.outside_fit or {}).get(received)
    if callable(previous):  # submitit's: requeue at once (USR2) or only log (SIGTERM)
        previous(received, frame)
        return
    _Deferred.signum = received  # a plain SLURM job outside fit: nothing to save, hand over now
    _hand_over()


def _arm(rank: int, requeue: _Action, write_arguments: _Action | None, outside_fit: Mapping | None) -> None:
    _Deferred.rank, _Deferred.requeue, _Deferred.write_arguments = rank, requeue, write_arguments
    _Deferred.outside_fit = outside_fit
    for signum in DEFERRED_SIGNALS:
        signal.signal(signum, _on_signal)


def defer_submitit_signals(usr_signal: int, rank: int) -> None:
    """In a hydra/launcher=slurm job, once submitit has set its handlers: submitit's requeue (`usr_signal`,
    USR2) and SIGTERM, and USR1 as a second requeue signal, are deferred while a Trainer fits."""
    requeue = signal.getsignal(usr_signal)
    stop = signal.getsignal(STOP_SIGNAL)
    if not callable(requeue):
        raise RuntimeError(f"submitit set no handler for {signal.Signals(usr_signal).name}")
    owner = getattr(requeue, "__self__", None)  # submitit's SignalHandler
    outside_fit = {signum: requeue for signum in REQUEUE_SIGNALS} | {STOP_SIGNAL: stop}
    _arm(rank, requeue, getattr(owner, "checkpoint_and_exit", None), outside_fit)


def defer_slurm_signals(rank: int) -> None:
    """In a task of a plain `sbatch` + `srun` job: rank 0 requeues the job itself after a requeue signal."""
    _arm(rank, _scontrol_requeue, None, None)


def _scontrol_requeue(signum: int, frame: FrameType | None = None) -> None:
    job_id = slurm_queue.this_job_id()
    problem = slurm_queue.requeue(job_id)
    if problem is not None:
        log.error(
            f"scontrol requeue {job_id} failed ({problem}): the job was not requeued; submit it with --requeue "
            "(the site's JobRequeue may forbid requeueing)"
        )
        _Deferred.requeued = None  # the run record says failed, with `resume=<run folder>` to continue
        return
    log.warning(f"requeued SLURM job {job_id}: its next attempt resumes from last.ckpt")


def stop_exception(signum: int) -> BaseException:
    """What ends every rank after the hand-over: Lightning's SIGTERMException (status 143), else the signal's;
    marked `every_rank`: each rank reports its own stop, not another rank's as its cause (`RankGroup`)."""
    stop: BaseException = SIGTERMException() if signum == STOP_SIGNAL else Interrupted(signum)
    stop.every_rank = True  # type: ignore[attr-defined]
    return stop


def _hand_over(exiting: bool = False) -> None:
    """Rank 0 requeues (USR1/USR2) or writes the requeued job's arguments (SIGTERM, submitit); every rank then
    ends with `stop_exception` (unless `exiting`: an exception is already on its way)."""
    signum, step = _Deferred.signum, _Deferred.saved_step
    if signum is None or (step is None and _Deferred.fitting) or _Deferred.requeue is None:
        return
    _Deferred.signum, _Deferred.fitting, _Deferred.stopping = None, False, True
    where = f"last.ckpt at optimizer step {step}" if step is not None else "no new checkpoint"
    _Deferred.requeued = f"{signal.Signals(signum).name} received; {where}"
    if _Deferred.rank == 0:
        try:
            if signum == STOP_SIGNAL and _Deferred.write_arguments is not None:
                # submitit exits after writing the arguments; the exit is decided below
                with contextlib.suppress(SystemExit):
                    _Deferred.write_arguments(signum, None)
            elif signum != STOP_SIGNAL:
                # submitit's requeues and exits with the status its local executor reads as "requeue"
                _Deferred.requeue(signum, None)
        except SystemExit as requeued:  # submitit's exit after its requeue
            requeued.every_rank = True  # type: ignore[attr-defined]
            raise
        except BaseException:  # not requeued (e.g. submitit's max_num_timeout reached): an ordinary failure
            _Deferred.requeued = None
            raise
    if not exiting:
        raise stop_exception(signum)


def _in_slurm_task() -> bool:
    """Whether Lightning reads this process's rank from SLURM (an `srun` task, no torchrun inside it)."""
    return isinstance(cluster_environment(), SLURMEnvironment)


class RequeueCheckpoint(Callback):
    """Saves last.ckpt on every rank at the first batch end after a requeue signal, then hands over (module
    docstring). Inert outside SLURM: no handler, no collective."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if _Deferred.requeue is None and _in_slurm_task():
            defer_slurm_signals(trainer.global_rank)
        _Deferred.rank = trainer.global_rank
        _Deferred.fitting = _Deferred.requeue is not None  # a signal from here waits for the first batch end

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _hold_stop_signal()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _hold_stop_signal()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _Deferred.fitting = False
        _hand_over()  # a signal during the last batch: requeue now (the job then only tests)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        _Deferred.fitting = False
        if not _Deferred.aborting:  # an error on this rank alone: the others are not here to save with it
            return
        if _Deferred.saved_step is None:
            self._save(trainer)
        _hand_over(exiting=True)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        _hand_over()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _hand_over()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        signum = _agreed_signal(trainer)
        if signum:
            _Deferred.signum = signum
            self._save(trainer)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        signum = _agreed_signal(trainer)
        if signum:  # every rank raises at this batch; on_exception saves and hands over
            _Deferred.signum, _Deferred.aborting = signum, True
            raise stop_exception(signum)

    @staticmethod
    def _save(trainer: Trainer) -> None:
        path = last_checkpoint_path(trainer)
        # Registered as the checkpoint callback's own last.ckpt (part of the saved state): otherwise the resumed
        # job finds a last.ckpt it did not write and saves its final one as last-v1.ckpt, leaving last.ckpt
        # (what run_info and `ckpt_path=last` read) at the requeue step.
        trainer.checkpoint_callback.last_model_path = str(path)  # type: ignore[union-attr]
        trainer.save_checkpoint(path)
        _Deferred.saved_step = trainer.global_step
        log.warning(f"saved {path} at optimizer step {trainer.global_step}; handing over for the requeue")


def _agreed_signal(trainer: Trainer) -> int:
    """The pending signal any rank holds (0: none), the same on every rank: ranks may get SLURM's signal a batch
    apart. SIGTERM outranks USR2 outranks USR1 (the largest number wins)."""
    if _Deferred.requeue is None or not _Deferred.fitting:
        return 0
    pending = _Deferred.signum if _Deferred.signum is not None and _Deferred.saved_step is None else 0
    if trainer.world_size > 1:
        value = torch.tensor(pending, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        pending = int(value.item())
    return pending


def _hold_stop_signal() -> None:
    """While fitting, SIGTERM reaches only `_on_signal` (Lightning's handler, set after `setup`, is dropped)."""
    if _Deferred.requeue is not None and signal.getsignal(STOP_SIGNAL) is not _on_signal:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(STOP_SIGNAL, _on_signal)


def requeue_reason() -> str | None:
    """Why this job process is ending for a requeue (None otherwise): its run record says `requeued`."""
    return _Deferred.requeued


def requeue_left_to_slurm() -> bool:
    """Whether SLURM, not this job, requeues it (after SIGTERM: `scontrol requeue` or preemption, unless it was
    scancel): the run record then asks SLURM which it was. After USR1/USR2 the job has requeued itself."""
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


def reset() -> None:
    """Forget this process's requeue state (tests run several Trainers in one process)."""
    for name in (
        "signum",
        "saved_step",
        "stop_signal",
        "requeued",
        "requeue",
        "write_arguments",
        "outside_fit",
    ):
        setattr(_Deferred, name, None)
    _Deferred.fitting = _Deferred.stopping = _Deferred.aborting = False
    _Deferred.rank = 0
    with contextlib.suppress(ValueError):
        for signum in DEFERRED_SIGNALS:
            if signal.getsignal(signum) is _on_signal:
                signal.signal(signum, signal.SIG_DFL)
