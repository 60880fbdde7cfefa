"""SLURM requeue on CPU without a cluster: the deferred submitit handler, last.ckpt at the next batch end, and
the requeued job's overrides (`dgggan_pl.launch.requeue`). The end-to-end run is in tests/test_sweeps.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dgggan_pl.launch import requeue
from dgggan_pl.launch.requeue import RequeueCheckpoint, install_deferred_handler, resume_overrides


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


class _SignalAt(pl.Callback):
    """Sends the requeue signal to this process in the middle of training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


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
    requeue._Deferred.signum, requeue._Deferred.fitting, requeue._Deferred.handler = None, False, None


def _trainer(tmp_path: Path, *callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=20,
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks],
        logger=False,
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
