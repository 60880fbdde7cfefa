"""Bad values are refused before a run starts, in one line naming the key and what to do."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dgggan_pl.callbacks import checkpoint as checkpoint_module
from dgggan_pl.callbacks.checkpoint import AtomicCheckpointIO
from dgggan_pl.config import ConfigError
from dgggan_pl.config_checks import check_config
from dgggan_pl.train import train

SMOKE = ["experiment=full", "debug=smoke", "logger=csv"]


@pytest.mark.parametrize(
    ("override", "key", "advice"),
    [
        ("iterations=0", "iterations=0", "must be > 0"),
        ("iterations=-3", "iterations=-3", "must be > 0"),
        ("data.batch_size=0", "data.batch_size=0", "global batch"),
        ("optim.generator.lr=-1", "optim.generator.lr=-1", "must be > 0"),
        ("trainer.max_steps=10", "trainer.max_steps", "set iterations=N instead"),
        (
            "hr_patch_size=30",
            "hr_patch_size=30",
            "must be a multiple of scale=4 (the LR crop is hr_patch_size / scale); use 28 or 32",
        ),
        (
            "data.num_workers=-1",
            "data.num_workers=-1",
            "must be >= 0 (data-loading worker processes; 0 loads in",
        ),
    ],
)
def test_bad_values_are_refused_in_one_line_before_anything_is_written(
    compose, tmp_path, override, key, advice
) -> None:
    cfg = compose([*SMOKE, override, f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    message = str(caught.value)
    assert key in message and advice in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # no record, no config, no log folder


def test_a_crop_too_small_for_the_trained_critics_is_refused(compose) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(compose(["experiment=full", "hr_patch_size=32", "paths.output_dir=unused"]))
    assert str(refused.value) == (
        "hr_patch_size=32: model.image_critic: patch_size=32 is too small for 6 stride-2 stages (needs >= 64); "
        "raise hr_patch_size or shorten model.*_critic.widths"
    )
    check_config(compose(["experiment=pretrain", "hr_patch_size=32", "paths.output_dir=unused"]))  # no critic


def test_ddp_without_gpus_points_to_ddp_cpu(compose) -> None:
    cfg = compose(["trainer=ddp", "paths.output_dir=unused"])
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu.*use trainer=ddp_cpu"):
        check_config(cfg, cuda_available=False)
    check_config(cfg, cuda_available=True)  # the same config is fine where a GPU is visible
    check_config(compose(["trainer=ddp_cpu", "paths.output_dir=unused"]), cuda_available=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "first_words"),
    [
        ("iterations=0", "error: iterations=0: must be > 0"),
        ("resume=latest", "error: resume=latest: no run with checkpoints/last.ckpt under outputs/full/runs"),
    ],
)
def test_the_command_line_prints_one_line_and_no_traceback(tmp_path, override, first_words) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dgggan_pl.train", *SMOKE, override],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith(first_words), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_disk_full_during_a_checkpoint_save_says_no_space_left(tmp_path, monkeypatch) -> None:
    """torch.save on a full disk raises `inline_container.cc ... unexpected pos`; we name the cause and path."""

    class FullDisk(io.RawIOBase):
        """Takes the first bytes, then the disk is full (as a real one fills mid-checkpoint)."""

        def __init__(self) -> None:
            self.written = 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            if self.written > 512:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return len(data)

    @contextmanager
    def full_disk(path, mode):
        yield FullDisk()

    monkeypatch.setattr(checkpoint_module, "atomic_open", full_disk)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError, match="no space left on device while writing checkpoint") as caught:
        AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(4096)}, path)
    assert caught.value.errno == errno.ENOSPC and str(path) in str(caught.value)
    assert "unexpected pos" in str(caught.value.__cause__)  # really torch's own failure underneath


def test_other_save_errors_are_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        AtomicCheckpointIO().save_checkpoint({}, Path(tmp_path) / "last.ckpt")
