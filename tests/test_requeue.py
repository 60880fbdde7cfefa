"""SLURM requeue on CPU without a cluster: the deferred submitit handler, last.ckpt at the next batch end, and
the requeued job's overrides (`dgggan_pl.launch.requeue`). The end-to-end run is in tests/test_sweeps.py."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from dgggan_pl.launch import requeue
from dgggan_pl.launch.requeue import (
    RequeueCheckpoint,
    exit_code_after_stop,
    install_deferred_handler,
    requeue_left_to_slurm,
    requeue_reason,
    resume_overrides,
)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=2)


class _Logged(_Tiny):
    """Logs its loss at every step, so that a CSV logger shows which batches were recorded."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss)
        return loss


class _SignalAt(pl.Callback):
    """Sends `signum` (the requeue signal) to this process in the middle of training step `step`."""

    def __init__(self, step: int, signum: int = signal.SIGUSR2) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def submitit_handler() -> list[tuple[int, int]]:
    """Stands in for submitit's USR2 handler (requeue and exit); records (signal, last.ckpt step) per call."""
    calls: list[tuple[int, int]] = []
    previous = signal.getsignal(signal.SIGUSR2)

    def handler(signum: int, frame: object) -> None:
        calls.append((signum, handler.step))  # type: ignore[attr-defined]
        raise SystemExit(144)  # what submitit's local requeue does

    handler.step = -1  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR2, handler)
    yield calls
    signal.signal(signal.SIGUSR2, previous)
    _reset_deferred()


def _reset_deferred() -> None:
    requeue._Deferred.signum, requeue._Deferred.fitting, requeue._Deferred.handler = None, False, None
    requeue._Deferred.saved_step = requeue._Deferred.stop_signal = requeue._Deferred.requeued = None


def _trainer(tmp_path: Path, *callbacks: pl.Callback, logger: Any = False) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=20,
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_signal_while_fitting_saves_last_then_requeues(tmp_path: Path, submitit_handler: list) -> None:
    install_deferred_handler(signal.SIGUSR2)
    with pytest.raises(SystemExit):
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=7)).fit(_Tiny())
    assert [signum for signum, _ in submitit_handler] == [signal.SIGUSR2]  # handed over once, after saving
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8  # the batch in flight finished, then last.ckpt was written
    resumed = _trainer(tmp_path)  # the requeued job: the same run folder
    resumed.fit(_Tiny(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed.global_step == 20  # the requeued job continues the count to the end
    # ... and its final last.ckpt replaces the requeue one (not last-v1.ckpt beside a stale last.ckpt).
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))


def _logged_steps(tmp_path: Path) -> list[int]:
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as handle:
        return sorted({int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")})


def test_the_checkpoint_batch_keeps_its_metrics_row(tmp_path: Path, submitit_handler: list) -> None:
    """The hand-over waits until the batch that saved last.ckpt is logged: the resumed job starts after it, so
    an exit before its row was written would leave a hole in the metrics (one per requeue)."""
    install_deferred_handler(signal.SIGUSR2)
    logger = CSVLogger(tmp_path, name="csv")
    with pytest.raises(SystemExit):
        _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=7), logger=logger).fit(_Logged())
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert _logged_steps(tmp_path) == list(range(8))  # steps 0..7: the checkpoint batch (7) included
    assert requeue_reason() == "SIGUSR2 received; last.ckpt at optimizer step 8"
    assert not requeue_left_to_slurm()  # submitit requeued it: run_info says requeued without asking SLURM


class _SubmititHandler:
    """Stands in for submitit's SignalHandler: USR2 checkpoints, requeues and exits; SIGTERM is only logged;
    `checkpoint_and_exit` writes the requeued job's arguments and exits."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def checkpoint_and_try_requeue(self, signum: int, frame: object) -> None:
        self.calls.append("requeue")
        raise SystemExit(-1)

    def bypass(self, signum: int, frame: object) -> None:
        self.calls.append("bypass")

    def checkpoint_and_exit(self, signum: int, frame: object) -> None:
        self.calls.append("checkpoint")
        raise SystemExit(-1)


def test_sigterm_in_a_slurm_job_saves_last_and_writes_the_resume_arguments(tmp_path: Path) -> None:
    """`scontrol requeue` and preemption send SIGTERM: last.ckpt at the next batch end, the requeued job's
    arguments written (SLURM requeues the job itself), and an exit status that does not read as success."""
    handler = _SubmititHandler()
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    signal.signal(signal.SIGTERM, handler.bypass)
    try:
        install_deferred_handler(signal.SIGUSR2)
        install_deferred_handler(signal.SIGTERM)
        trainer = _trainer(tmp_path, RequeueCheckpoint(), _SignalAt(step=5, signum=signal.SIGTERM))
        with pytest.raises(SystemExit):  # Lightning's SIGTERMException at the end of that batch
            trainer.fit(_Tiny())
        assert handler.calls == ["checkpoint"]  # no requeue of our own, no USR2 path
        assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
        assert exit_code_after_stop() == 128 + signal.SIGTERM
        assert requeue_reason() == "SIGTERM received; last.ckpt at optimizer step 6"
        assert requeue_left_to_slurm()  # requeue or scancel: run_info asks SLURM which
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _reset_deferred()


def test_without_the_callback_the_signal_is_submitits_at_once(tmp_path: Path, submitit_handler: list) -> None:
    """Outside fit (start-up, test phase) nothing is deferred: submitit requeues immediately."""
    install_deferred_handler(signal.SIGUSR2)
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGUSR2)
    assert len(submitit_handler) == 1


def test_requeued_overrides_resume_from_last_once_it_exists() -> None:
    given = ["ablation=no_se", "ckpt_path=/old.ckpt", "++trainer.devices=1"]
    assert resume_overrides(given, has_last_checkpoint=False) == given  # a fresh job must not ask for last
    assert resume_overrides(given, has_last_checkpoint=True) == [
        "ablation=no_se",
        "++trainer.devices=1",
        "ckpt_path=last",
    ]
    assert resume_overrides(["resume=latest"], has_last_checkpoint=True) == ["ckpt_path=last"]


def test_recorded_status_reads_the_run_record_for_the_interruption_line(tmp_path):
    """train's one line after SIGTERM says what run_info.json holds: `requeued` inside SLURM, not `failed`."""
    import json

    from dgggan_pl.runs import recorded_status

    assert recorded_status(tmp_path) == "unknown"
    (tmp_path / "run_info.json").write_text("{not json")
    assert recorded_status(tmp_path) == "unknown"
    (tmp_path / "run_info.json").write_text(json.dumps({"status": "requeued"}))
    assert recorded_status(tmp_path) == "requeued"
    (tmp_path / "run_info.json").write_text(json.dumps({"status": "failed"}))
    assert recorded_status(tmp_path) == "failed"
