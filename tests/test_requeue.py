"""SLURM requeue on CPU without a cluster (`dgggan_pl.launch.requeue`): a signal while fitting saves last.ckpt at
the next batch end, then the job hands over, under hydra/launcher=slurm (submitit's handlers, stood in for here)
and in a plain `sbatch` + `srun` task (SLURM's environment variables and a recording `scontrol`). The runs on a
real SLURM cluster are in tests/test_slurm_cluster.py; the submitit local executor's in tests/test_sweeps.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dgggan_pl.launch import requeue
from dgggan_pl.launch.requeue import (
    RequeueCheckpoint,
    defer_submitit_signals,
    exit_code_after_stop,
    requeue_left_to_slurm,
    requeue_reason,
    resume_overrides,
)
from dgggan_pl.runs import recorded_status
from dgggan_pl.utils.exits import Interrupted

SLURM_TASK_ENV = {  # what srun gives a one-task job's task (Lightning then picks its SLURMEnvironment)
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=2)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)


class _SignalAt(pl.Callback):
    """Sends `signum` to this process in the middle of training step `step` (or of validation batch 1)."""

    def __init__(self, step: int, signum: int = signal.SIGUSR2, in_validation: bool = False) -> None:
        self.step, self.signum, self.in_validation = step, signum, in_validation
        self.handlers: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and not self.in_validation:
            self.handlers = {s.name: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and self.in_validation and batch_idx == 1:
            os.kill(os.getpid(), self.signum)


class _SubmititHandler:
    """Stands in for submitit's SignalHandler: USR2 checkpoints, requeues and exits (144, as its local executor);
    SIGTERM is only logged; `checkpoint_and_exit` writes the requeued job's arguments and exits."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def checkpoint_and_try_requeue(self, signum: int, frame: object) -> None:
        self.calls.append("requeue")
        raise SystemExit(144)

    def bypass(self, signum: int, frame: object) -> None:
        self.calls.append("bypass")

    def checkpoint_and_exit(self, signum: int, frame: object = None) -> None:
        self.calls.append("checkpoint")
        raise SystemExit(-1)


@pytest.fixture(autouse=True)
def _fresh_requeue_state() -> Iterator[None]:
    previous = {s: signal.getsignal(s) for s in requeue.DEFERRED_SIGNALS}
    yield
    requeue.reset()
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture
def submitit() -> _SubmititHandler:
    """submitit's handlers as a hydra/launcher=slurm job has them, deferred by the launcher."""
    handler = _SubmititHandler()
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    signal.signal(signal.SIGTERM, handler.bypass)
    defer_submitit_signals(signal.SIGUSR2, rank=0)
    return handler


def _scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int = 0) -> Path:
    """A `scontrol` on PATH that records its arguments (one call per line) and exits `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol_calls"
    script = bin_dir / "scontrol"
    refusal = "echo 'scontrol: error: Requested operation is presently disabled' >&2" if status else ":"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{refusal}\nexit {status}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture
def slurm_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as the one task of a plain `sbatch` + `srun` job; returns the scontrol call record."""
    for name, value in SLURM_TASK_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return _scontrol(tmp_path, monkeypatch)


def _trainer(tmp_path: Path, *callbacks: pl.Callback, logger: Any = False, **kwargs: Any) -> pl.Trainer:
    options = {"max_steps": 20, "limit_val_batches": 0, **kwargs}
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def _saved_step(tmp_path: Path) -> int:
    return int(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def _logged_steps(tmp_path: Path) -> list[int]:
    """Every training row's step, duplicates kept."""
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]


def test_submitit_usr2_saves_last_keeps_its_row_then_requeues(
    tmp_path: Path, submitit: _SubmititHandler
) -> None:
    """hydra/launcher=slurm: the batch in flight finishes, last.ckpt is written, that batch's metrics row is
    logged, then submitit requeues (its exit status, 144, is what its local executor reads as "requeue")."""
    logger = CSVLogger(tmp_path, name="csv")
    with pytest.raises(SystemExit) as stop:
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=7), logger=logger).fit(_Tiny())
    assert stop.value.code == 144 and submitit.calls == ["requeue"]  # handed over once, after saving
    assert _saved_step(tmp_path) == 8
    assert _logged_steps(tmp_path) == list(
        range(8)
    )  # steps 0..7 once each: the checkpoint batch (7) included
    assert requeue_reason() == "SIGUSR2 received; last.ckpt at optimizer step 8"
    assert not requeue_left_to_slurm()  # requeued already: run_info says requeued without asking SLURM
    requeue.reset()
    resumed = _trainer(tmp_path)  # the requeued job: the same run folder
    resumed.fit(_Tiny(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed.global_step == 20  # continues the count to the end, and its final last.ckpt replaces the
    assert _saved_step(tmp_path) == 20  # requeue one (not a last-v1.ckpt beside a stale last.ckpt)
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))


def test_submitit_sigterm_saves_and_writes_the_resume_arguments(
    tmp_path: Path, submitit: _SubmititHandler
) -> None:
    """`scontrol requeue` and preemption send SIGTERM: last.ckpt at the next batch end, the requeued job's
    arguments written (SLURM requeues the job itself), and an exit status that does not read as success."""
    with pytest.raises(SIGTERMException):
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=5, signum=signal.SIGTERM)).fit(_Tiny())
    assert submitit.calls == ["checkpoint"]  # no requeue of its own, and submitit's SIGTERM log never ran
    assert _saved_step(tmp_path) == 6
    assert exit_code_after_stop() == 128 + signal.SIGTERM
    assert requeue_reason() == "SIGTERM received; last.ckpt at optimizer step 6"
    assert requeue_left_to_slurm()  # requeue or scancel: run_info asks SLURM which


def test_outside_fit_the_signal_is_submitits_at_once(submitit: _SubmititHandler) -> None:
    """Start-up: nothing to save, submitit requeues immediately; USR1 is a requeue signal too."""
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGUSR1)
    assert submitit.calls == ["requeue"]


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGUSR1])
def test_plain_srun_task_saves_and_requeues_itself(tmp_path: Path, slurm_task: Path, signum: int) -> None:
    """`sbatch` + `srun python -m dgggan_pl.train`, signalled before its time limit (USR2, or USR1 as Lightning's
    docs suggest): last.ckpt at the next batch end, then rank 0 runs `scontrol requeue <job>` once and the task
    ends as stopped by that signal. Lightning's own auto-requeue never armed (no hpc_ckpt, USR1 held here)."""
    at = _SignalAt(step=7, signum=signum)
    with pytest.raises(Interrupted) as stop:
        _trainer(tmp_path, RequeueCheckpoint(), at).fit(_Tiny())
    assert stop.value.signum == signum and stop.value.every_rank and _saved_step(tmp_path) == 8
    assert slurm_task.read_text().splitlines() == ["requeue 77"]
    assert requeue_reason() == f"{signal.Signals(signum).name} received; last.ckpt at optimizer step 8"
    assert at.handlers == {"SIGUSR1": requeue._on_signal, "SIGTERM": requeue._on_signal}  # while fitting
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))


def test_plain_srun_task_leaves_a_sigterm_requeue_to_slurm(tmp_path: Path, slurm_task: Path) -> None:
    with pytest.raises(SIGTERMException):
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=3, signum=signal.SIGTERM)).fit(_Tiny())
    assert _saved_step(tmp_path) == 4 and not slurm_task.exists()  # SLURM requeues (or it was scancel)
    assert requeue_left_to_slurm()


def test_a_refused_scontrol_requeue_is_a_failure_with_its_checkpoint(
    tmp_path: Path, slurm_task: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A job submitted with --no-requeue (or a site that forbids it): the run is not recorded `requeued`
    (train's line then says `resume=<run folder>`), and the log says why and what to change."""
    _scontrol(tmp_path, monkeypatch, status=1)
    with pytest.raises(Interrupted):
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=2)).fit(_Tiny())
    assert _saved_step(tmp_path) == 3 and requeue_reason() is None
    assert "presently disabled): the job was not requeued; submit it with --requeue" in caplog.text


def test_a_signal_during_validation_ends_it_and_saves(tmp_path: Path, slurm_task: Path) -> None:
    """A validation can outlast SLURM's KillWait: the signal ends it at the next validation batch."""
    at = _SignalAt(step=4, signum=signal.SIGTERM, in_validation=True)
    trainer = _trainer(tmp_path, RequeueCheckpoint(), at, limit_val_batches=4, val_check_interval=4)
    with pytest.raises(SIGTERMException):
        trainer.fit(_Tiny())
    assert (
        _saved_step(tmp_path) == 4
        and trainer.fit_loop.epoch_loop.val_loop.batch_progress.current.processed == 2  # of 4
    )


def test_outside_slurm_the_callback_is_inert(tmp_path: Path) -> None:
    """No SLURM task, no submitit: no handler is installed (Ctrl+C and `kill` keep their meaning)."""
    before = signal.getsignal(signal.SIGUSR2)
    _trainer(tmp_path, RequeueCheckpoint(), max_steps=2).fit(_Tiny())
    assert signal.getsignal(signal.SIGUSR2) is before and requeue_reason() is None


def test_requeued_overrides_resume_from_last_once_it_exists() -> None:
    given = ["ablation=no_se", "ckpt_path=/old.ckpt", "++trainer.devices=1"]
    assert resume_overrides(given, has_last_checkpoint=False) == given  # a fresh job must not ask for last
    assert resume_overrides(given, has_last_checkpoint=True) == [
        "ablation=no_se",
        "++trainer.devices=1",
        "ckpt_path=last",
    ]
    assert resume_overrides(["resume=latest"], has_last_checkpoint=True) == ["ckpt_path=last"]


def test_recorded_status_reads_the_run_record_for_the_interruption_line(tmp_path: Path) -> None:
    """train's one line after SIGTERM says what run_info.json holds: `requeued` inside SLURM, not `failed`."""
    assert recorded_status(tmp_path) == "unknown"
    (tmp_path / "run_info.json").write_text("{not json")
    assert recorded_status(tmp_path) == "unknown"
    (tmp_path / "run_info.json").write_text(json.dumps({"status": "requeued"}))
    assert recorded_status(tmp_path) == "requeued"
    (tmp_path / "run_info.json").write_text(json.dumps({"status": "failed"}))
    assert recorded_status(tmp_path) == "failed"


TWO_TASKS = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
import torch
from test_requeue import RequeueCheckpoint, _SignalAt, _Tiny, _trainer
from pathlib import Path
from dgggan_pl.utils.exits import Interrupted
rank = int(os.environ["SLURM_PROCID"])
trainer = _trainer(Path({folder!r}), RequeueCheckpoint(), _SignalAt(step=5 if rank == 1 else 9),
                   strategy="ddp", devices=2, max_steps=40)
try:
    trainer.fit(_Tiny())
except Interrupted as stop:
    print("stopped at", trainer.global_step, flush=True)
    sys.exit(128 + stop.signum)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_srun_tasks_save_at_the_same_step_and_both_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks of one SLURM job (gloo), the requeue signal reaching rank 1 four batches before rank 0: both
    save at the same step (one last.ckpt, written once), rank 0 alone requeues, both exit 140 (USR2) instead of
    rank 1 training on against a rank 0 that is gone."""
    calls = _scontrol(tmp_path, monkeypatch)
    env = {**os.environ, **SLURM_TASK_ENV, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    script = TWO_TASKS.format(tests=str(Path(__file__).parent), folder=str(tmp_path))
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=240)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [140, 140], "\n".join(outputs)
    assert all("stopped at 6" in output for output in outputs)
    assert _saved_step(tmp_path) == 6 and calls.read_text().splitlines() == ["requeue 77"]
    assert sum("saved " in output and "last.ckpt at optimizer step 6" in output for output in outputs) == 2
