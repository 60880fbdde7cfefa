"""Bad inputs and faults on every command: nothing lost, one clear line, and no failure that looks like success.

Each test names the case it covers; the exit codes and lines are tabled in the issue's closing note.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf
from PIL import Image

from dgggan_pl import prepare, train, upscale
from dgggan_pl.callbacks.checkpoint import AtomicCheckpointIO
from dgggan_pl.config import ConfigError
from dgggan_pl.config_checks import check_config
from dgggan_pl.data import io
from dgggan_pl.data.datasets import FolderPairs, InMemoryFolders, match_lr_files
from dgggan_pl.data.io import ImageFolderError, list_images, read_image
from dgggan_pl.report import main as report_main
from dgggan_pl.resume_checks import check_resume
from dgggan_pl.runs import (
    LOCK_FILE,
    ResumeError,
    RunFolderError,
    RunLock,
    discard_unused_run_dir,
    refuse_finished_run,
)
from dgggan_pl.utils.exits import Interrupted, exit_on_signals, interruptible

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMOKE = ["debug=smoke", "logger=csv"]
QUIET_HYDRA = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # leave the logging of the tests alone
EXIT_USAGE = 2


def _image(path: Path, height: int = 8, width: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _upscale(args: list[str], weights: Path) -> int:
    return upscale.main([*args, "--weights", str(weights), "--device", "cpu", "--tile", "0"])


def _hydra_train(monkeypatch, tmp_path: Path, overrides: list[str]) -> SystemExit:
    """`python -m dgggan_pl.train <overrides>` in this process (cwd tmp_path); returns its SystemExit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dgggan_pl.train", *overrides])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    return exit_info.value


# 1. upscale never writes over its inputs


def test_upscale_refuses_an_output_that_is_its_input(tiny_generator_checkpoint, tmp_path, capsys) -> None:
    weights = tiny_generator_checkpoint()
    source = _image(tmp_path / "same" / "good1.png")
    before = source.read_bytes()
    assert _upscale([str(source), str(source), "--overwrite"], weights) == EXIT_USAGE
    assert _upscale([str(source), str(source.parent), "--overwrite"], weights) == EXIT_USAGE  # same/good1.png
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"error: the output {source} is the input {source}: writing it would destroy the input; "
        "choose another output file or folder"
    )
    assert source.read_bytes() == before and sorted(p.name for p in source.parent.iterdir()) == ["good1.png"]


def test_upscale_refuses_an_output_folder_in_its_input_folder(
    tiny_generator_checkpoint, tmp_path, capsys
) -> None:
    weights = tiny_generator_checkpoint()
    folder = _image(tmp_path / "same" / "a.jpg").parent
    for output in (folder, folder / "out"):
        assert _upscale([str(folder), str(output), "--overwrite"], weights) == EXIT_USAGE
        assert "choose an output folder outside it" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["a.jpg"]  # nothing written, no out/ created


# 2. one run per run folder


def test_run_lock_refuses_a_live_owner_and_replaces_a_stale_one(tmp_path, caplog) -> None:
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(RunFolderError, match=f"in use by another run \\(pid {os.getppid()} on "):
        RunLock(tmp_path).acquire()
    other_host = {"pid": 1, "host": "elsewhere", "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(other_host))
    with pytest.raises(RunFolderError, match="on elsewhere"):
        RunLock(tmp_path).acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING):
        again = RunLock(tmp_path).acquire()
    assert "stale lock" in caplog.text and again.held
    again.release()
    lock.held = False  # its file was replaced above
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_new_run_refuses_a_folder_holding_another_run(compose, tmp_path, monkeypatch, capsys) -> None:
    refuse_finished_run(tmp_path, resuming=False)  # no record: a new run may start here
    (tmp_path / "run_info.json").write_text("{}")
    with pytest.raises(RunFolderError, match=f"it saved no checkpoint to resume from: delete {tmp_path} to"):
        refuse_finished_run(tmp_path, resuming=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunFolderError, match=f"continue it with resume={tmp_path}"):
        refuse_finished_run(tmp_path, resuming=False)
    refuse_finished_run(tmp_path, resuming=True)

    run_dir = tmp_path / "D"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "run_info.json").write_text('{"status": "completed"}')
    (run_dir / ".hydra" / "config.yaml").write_text("run 1\n")
    exit_info = _hydra_train(monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, f"hydra.run.dir={run_dir}"])
    assert str(exit_info.code).startswith(f"error: {run_dir} already holds a run (run_info.json)")
    assert (run_dir / "run_info.json").read_text() == '{"status": "completed"}'
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml"]  # run 1's, untouched
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "run 1\n"
    assert not (run_dir / LOCK_FILE).exists()


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch) -> None:
    """A file where the run folder's parent should be: one line naming the folder and the key (Hydra's job runner
    used to print its own traceback before any of our code ran)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    exit_info = _hydra_train(
        monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, f"hydra.run.dir={blocker / 'run'}"]
    )
    assert exit_info.code == (
        f"error: cannot write to the run folder {blocker / 'run'} (Not a directory): make it writable or choose "
        "another hydra.run.dir"
    )


def test_a_second_run_into_a_running_folder_is_refused(tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "D"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    exit_info = _hydra_train(monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, f"hydra.run.dir={run_dir}"])
    assert "is in use by another run" in str(exit_info.code)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # the refused attempt wrote no .hydra/


# 3. signals: 130 / 143 with one line


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_end_a_cli_with_one_line_and_the_shell_status(signum, status, tmp_path, capsys) -> None:
    partial = tmp_path / "partial"

    @interruptible("tool", "rerun it")
    def main() -> int:
        partial.write_text("x")
        try:
            os.kill(os.getpid(), signum)
            raise AssertionError("the signal did not interrupt")
        finally:
            partial.unlink()

    assert main() == status
    name = signal.Signals(signum).name
    how = " (Ctrl+C)" if signum == signal.SIGINT else ""
    assert capsys.readouterr().err == f"tool: stopped by {name}{how}; rerun it\n"
    assert not partial.exists()  # finally blocks ran
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_trainer_handler_defers_sigterm_to_lightning() -> None:
    with exit_on_signals():
        ours = signal.getsignal(signal.SIGTERM)
        calls: list[int] = []

        def lightning_like(signum, frame):  # Lightning's handler calls the previous one too
            calls.append(signum)
            ours(signum, frame)

        signal.signal(signal.SIGTERM, lightning_like)
        os.kill(os.getpid(), signal.SIGTERM)  # no Interrupted: Lightning stops at the batch end
        signal.signal(signal.SIGTERM, ours)
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
    assert calls == [signal.SIGTERM]


@pytest.mark.parametrize(
    ("error", "status", "stopped_by"),
    [(SIGTERMException(), 143, "SIGTERM"), (Interrupted(signal.SIGINT), 130, "SIGINT (Ctrl+C)")],
)
def test_train_exits_with_the_signal_status(error, status, stopped_by, tmp_path, monkeypatch, capsys) -> None:
    """Lightning's SIGTERMException is a SystemExit without a code: before, `train` exited 0 on SIGTERM."""

    def stopped(cfg):
        raise error

    monkeypatch.setattr(train, "train", stopped)
    run_dir = tmp_path / "r"
    expected = f"train: stopped by {stopped_by}; run_info.json says failed; "
    for advice in ("no checkpoint was saved yet, so start it again", f"continue with resume={run_dir}"):
        exit_info = _hydra_train(monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, f"hydra.run.dir={run_dir}"])
        assert exit_info.code == status
        assert capsys.readouterr().err.strip().splitlines()[-1] == expected + advice
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")


# 4. integer keys


@pytest.mark.parametrize("override", ["iterations=1.5", "data.batch_size=2.5", "optim.n_critic=true"])
def test_integer_keys_refuse_fractions(compose, override) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key}=.*: must be a whole number$"):
        check_config(compose(["experiment=full", override]))
    check_config(
        OmegaConf.create({"iterations": 5e5}), cuda_available=False
    )  # a whole number written as a float


# 5. temp files of interrupted writes


def test_prepare_removes_stale_temp_files_and_leaves_none_when_interrupted(tmp_path, monkeypatch) -> None:
    hr_dir = tmp_path / "hr"
    for index in range(3):
        _image(hr_dir / f"{index:04d}.png", 48, 48, seed=index)
    out = tmp_path / "out"
    stale = out / prepare.HR_SUBDIR / ".0001_s001.png.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a kill")
    real_process = prepare._process

    def interrupted_midway(task):
        if task.hr_path.stem == "0001":
            (task.hr_out / ".0001_s001.png.zz.tmp").write_bytes(b"mid-write")
            os.kill(os.getpid(), signal.SIGINT)
        return real_process(task)

    monkeypatch.setattr(prepare, "_process", interrupted_midway)
    args = ["--hr-dir", str(hr_dir), "--out-dir", str(out), "--workers", "1", "--no-progress"]
    args += ["--crop", "32", "--step", "16", "--threshold", "0"]
    assert prepare.main(args) == 130
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(prepare, "_process", real_process)
    assert prepare.main(args) == 0
    assert not list(out.rglob("*.tmp")) and len(list_images(out / prepare.HR_SUBDIR)) == 3 * 4


def test_upscale_removes_its_stale_temp_files(tiny_generator_checkpoint, tmp_path, capsys) -> None:
    weights = tiny_generator_checkpoint()
    source = _image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    stale, foreign = out / ".a.png.k1ll3d.tmp", out / ".notes.txt.x.tmp"
    stale.write_bytes(b"partial")
    foreign.write_bytes(b"not ours")
    assert _upscale([str(source.parent), str(out)], weights) == 0
    assert f"removed {stale}, left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [foreign.name, "a.png"]


# 6. unreadable training files


def test_unreadable_training_files_are_skipped_counted_and_capped(tmp_path, caplog) -> None:
    folder = tmp_path / "train"
    for index in range(4):
        _image(folder / f"{index}.png", 16, 16, seed=index)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with caplog.at_level(logging.WARNING):
        source = FolderPairs(folder, None, scale=4, max_unreadable=1)
    assert len(source) == 4 and [p.name for p in source.hr_paths] == ["0.png", "1.png", "2.png", "3.png"]
    assert len(source.unreadable) == 1 and "broken.png" in source.unreadable[0]
    assert "skipped training image" in caplog.text and "broken.png" in caplog.text
    with pytest.raises(
        ImageFolderError, match=r"1 of 5 training images .* data.train_source.max_unreadable=0"
    ):
        FolderPairs(folder, None, scale=4, max_unreadable=0)
    with pytest.raises(ImageFolderError, match="max_unreadable"):
        InMemoryFolders([folder], max_unreadable=0)
    assert len(InMemoryFolders([folder], max_unreadable=1)) == 4


def test_a_file_truncated_after_its_header_is_replaced_when_drawn(tmp_path) -> None:
    folder = tmp_path / "train"
    good = _image(folder / "0.png", 64, 64).read_bytes()
    _image(folder / "1.png", 64, 64, seed=1)
    (folder / "0.png").write_bytes(good[: len(good) // 2])  # opens, fails to decode
    source = FolderPairs(folder, None, scale=4, max_unreadable=1)
    assert len(source) == 2 and source.unreadable == []
    _, hr, name = source.load(0)
    assert name.endswith("1.png") and hr.shape == (3, 64, 64)
    assert len(source.unreadable) == 1 and "0.png" in source.unreadable[0]


@pytest.mark.slow  # builds the model and the Trainer (~6 s)
def test_an_empty_training_folder_is_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    overrides = [
        *SMOKE,
        *QUIET_HYDRA,
        f"hydra.run.dir={tmp_path / 'r'}",
        "data=div2k",
        f"data.train_source.hr_dir={tmp_path / 'empty'}",
        "data.train_source.lr_dir=null",
        "data.val_sets=[]",
        "data.test_sets=[]",
    ]
    exit_info = _hydra_train(monkeypatch, tmp_path, overrides)
    message = str(exit_info.code)
    assert (
        message.startswith(f"error: training HR folder {tmp_path / 'empty'} holds no images")
        and "\n" not in message
    )
    assert message.endswith("or set data.train_source.hr_dir")


# 8. one line instead of a traceback; say what is true


def test_missing_lr_files_are_all_named(tmp_path, capsys) -> None:
    hr = [_image(tmp_path / "hr" / f"{i:04d}.png", 16, 16) for i in range(4)]
    _image(tmp_path / "lr" / "0001x4.png", 4, 4)
    with pytest.raises(ImageFolderError, match="3 of 4 HR image.*: 0000.png, 0002.png, 0003.png; add them"):
        match_lr_files(hr, tmp_path / "lr", 4)
    args = [
        "--hr-dir",
        str(tmp_path / "hr"),
        "--lr-dir",
        str(tmp_path / "lr"),
        "--out-dir",
        str(tmp_path / "o"),
    ]
    assert prepare.main([*args, "--no-progress"]) == EXIT_USAGE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: 3 of 4 HR image(s)") and "0000.png, 0002.png, 0003.png" in line


@pytest.mark.parametrize("first", [True, False])
def test_disk_full_says_whether_a_previous_checkpoint_exists(first, tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    if not first:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def disk_full(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as caught:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    intact = "the previous last.ckpt is intact" in str(caught.value)
    none_before = f"no checkpoint had been saved in {tmp_path} before, so there is none to resume from"
    assert (intact, none_before in str(caught.value)) == (not first, first)
    if not first:  # a new best-<n>.ckpt fails to write: last.ckpt is what is left
        with pytest.raises(OSError, match=r"; last\.ckpt is intact$"):
            AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "best-2.ckpt")


def test_train_reports_a_full_disk_in_one_line(tmp_path, monkeypatch) -> None:
    message = "no space left on device while writing checkpoint c.ckpt: free space there; last.ckpt is intact"

    def disk_full(cfg):
        raise OSError(errno.ENOSPC, message)

    monkeypatch.setattr(train, "train", disk_full)
    exit_info = _hydra_train(monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, f"hydra.run.dir={tmp_path / 'r'}"])
    assert exit_info.code == f"error: {message}"


# 9. smaller ones


def test_gif_inputs_are_read_and_other_files_listed_as_skipped(
    tiny_generator_checkpoint, tmp_path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).convert("P").save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(folder)] == ["anim.gif"]
    assert read_image(folder / "anim.gif").shape == (3, 8, 10)
    assert _upscale([str(folder), str(tmp_path / "out")], tiny_generator_checkpoint()) == 0
    assert "skipped 1 file(s) of" in capsys.readouterr().err
    assert read_image(tmp_path / "out" / "anim.png").shape == (3, 32, 40)


def test_exif_orientation_is_applied_by_upscale_and_warned_once_elsewhere(
    tiny_generator_checkpoint, tmp_path, monkeypatch, caplog
) -> None:
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    paths = [tmp_path / "in" / f"{name}.jpg" for name in ("a", "b")]
    paths[0].parent.mkdir()
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(path, exif=exif)
    monkeypatch.setattr(io._Warned, "orientation", False)
    with caplog.at_level(logging.WARNING):
        assert read_image(paths[0]).shape == (3, 8, 12) and read_image(paths[1]).shape == (3, 8, 12)
    assert caplog.text.count("EXIF orientation 6") == 1 and "a.jpg" in caplog.text
    assert read_image(paths[0], apply_orientation=True).shape == (3, 12, 8)
    assert _upscale([str(paths[0]), str(tmp_path / "a.png")], tiny_generator_checkpoint()) == 0
    assert read_image(tmp_path / "a.png").shape == (3, 48, 32)  # as a viewer shows it


def test_an_unwritable_upscale_output_is_one_line_with_advice(
    tiny_generator_checkpoint, tmp_path, capsys
) -> None:
    source = _image(tmp_path / "in" / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert _upscale([str(source.parent), str(blocker / "out")], tiny_generator_checkpoint()) == EXIT_USAGE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: cannot write to {blocker / 'out'} (Not a directory); choose another output folder"


def test_report_on_a_single_run_folder_points_at_baseline(tmp_path, capsys) -> None:
    (tmp_path / "run_info.json").write_text('{"status": "completed"}')
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"error: {tmp_path} is a single run folder, not a sweep: report it with --baseline {tmp_path}\n"
    )


def test_resume_latest_without_a_run_leaves_no_folder(tmp_path, monkeypatch) -> None:
    exit_info = _hydra_train(
        monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, "resume=latest", "task_name=nothing"]
    )
    assert str(exit_info.code).startswith("error: resume=latest: no run with checkpoints/last.ckpt under")
    assert list((tmp_path / "outputs" / "nothing" / "runs").iterdir()) == []
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "train.log").write_text("")
    (kept / "notes.md").write_text("mine")
    assert not discard_unused_run_dir(kept) and (kept / "notes.md").exists()


# 10. photos smaller than the training crop (issue 30, item 2): skipped and listed at start, or one line


def test_photos_smaller_than_the_crop_are_skipped_and_listed_at_start(tmp_path, caplog) -> None:
    folder = tmp_path / "photos"
    for index in range(2):
        _image(folder / f"{index}.png", 40, 40, seed=index)
    _image(folder / "tiny.png", height=20, width=24)
    with caplog.at_level(logging.WARNING):
        source = FolderPairs(folder, None, scale=4, max_unreadable=10, min_size=32)
    assert [p.name for p in source.hr_paths] == ["0.png", "1.png"]
    assert source.unreadable == [
        f"{folder / 'tiny.png'}: 24x20, smaller than the 32x32 training crop (lower hr_patch_size or remove the file)"
    ]
    assert "tiny.png" in caplog.text
    assert [p.name for p in InMemoryFolders([folder], max_unreadable=10, min_size=32).hr_paths] == [
        "0.png",
        "1.png",
    ]
    for build in (
        lambda: FolderPairs(folder, None, scale=4, max_unreadable=0, min_size=32),
        lambda: InMemoryFolders([folder], max_unreadable=0, min_size=32),
    ):
        with pytest.raises(ImageFolderError) as refused:
            build()
        message = str(refused.value)
        assert (
            "\n" not in message
            and f"{folder / 'tiny.png'}: 24x20, smaller than the 32x32 training crop" in message
        )
        assert message.startswith("1 of 3 training images") and "max_unreadable=0" in message
    no_photo_holds_the_crop = "3 of 3 training images"  # the run never starts
    with pytest.raises(ImageFolderError, match=no_photo_holds_the_crop):
        FolderPairs(folder, None, scale=4, max_unreadable=10, min_size=48)


def test_lr_files_smaller_than_the_lr_crop_are_skipped(tmp_path) -> None:
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    _image(hr_dir / "a.png", 64, 64), _image(lr_dir / "a.png", 16, 16)
    _image(hr_dir / "b.png", 64, 64), _image(lr_dir / "b.png", 7, 16)  # LR crop 32 / 4 = 8
    source = FolderPairs(hr_dir, lr_dir, scale=4, max_unreadable=10, min_size=32)
    assert [p.name for p in source.hr_paths] == ["a.png"] and len(source.unreadable) == 1
    assert source.unreadable[0].startswith(f"{lr_dir / 'b.png'}: 16x7, smaller than the 8x8 training crop")


def test_data_folder_passes_the_crop_to_its_source(compose, tmp_path) -> None:
    from hydra.utils import instantiate

    from dgggan_pl.config import config_dir

    _image(tmp_path / "photos" / "big.png", 40, 40)
    _image(tmp_path / "photos" / "tiny.png", 20, 24)
    cfg = compose(["debug=smoke", "data=folder", f"data.train_source.hr_dir={tmp_path / 'photos'}"])
    assert cfg.data.train_source.min_size == cfg.hr_patch_size == 32
    source = instantiate(cfg.data.train_source)()  # what SRDataModule.setup("fit") builds
    assert [p.name for p in source.hr_paths] == ["big.png"] and "tiny.png" in source.unreadable[0]
    for name in ("div2k", "benchmark_train"):  # the same interpolation in the other folder sources
        source_cfg = OmegaConf.load(config_dir() / "data" / f"{name}.yaml").train_source
        assert OmegaConf.to_container(source_cfg)["min_size"] == "${..hr_patch_size}"


# 11. resumes that cannot work (issue 30, item 3): one line before anything is written


def _smoke_checkpoint(cfg, path: Path, batches: int = 4, batch_size: int = 2) -> Path:
    """A training checkpoint of `cfg`'s generator, stopped after `batches` of an 8-batch epoch."""
    from hydra.utils import instantiate

    state = {f"generator.{k}": v for k, v in instantiate(cfg.model.generator).state_dict().items()}
    loader = {
        "epoch": 0,
        "batches": batches,
        "batch_size": batch_size,
        "num_replicas": 1,
        "batches_per_epoch": 8,
    }
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"model": OmegaConf.to_container(cfg.model, resolve=True)},
            "loops": {"fit_loop": {"state_dict": {"combined_loader": [loader]}}},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def smoke_config():
    """The smoke config with 16 samples per epoch, composed once for the resume tests (they copy it)."""
    from dgggan_pl.config import compose_config

    return compose_config(["debug=smoke", "data.samples_per_epoch=16"])


@pytest.fixture
def resumable(smoke_config, tmp_path):
    """(config resuming <tmp>/run, its checkpoints folder holding last.ckpt and best-2.ckpt)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = smoke_config.copy()
    OmegaConf.update(cfg, "resume", str(run))
    OmegaConf.update(cfg, "paths.output_dir", str(run))
    _smoke_checkpoint(cfg, run / "checkpoints" / "best-2.ckpt", batches=2)
    _smoke_checkpoint(cfg, run / "checkpoints" / "last.ckpt")
    return cfg, run / "checkpoints"


def test_resume_from_a_truncated_checkpoint_names_the_intact_ones(resumable) -> None:
    cfg, checkpoints = resumable
    last = checkpoints / "last.ckpt"
    check_resume(cfg, last, world_size=1)  # fits: nothing to say
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ResumeError) as refused:
        check_resume(cfg, last, world_size=1)
    message = str(refused.value)
    assert message.startswith(f"ckpt_path={last}: cannot be loaded (RuntimeError: ") and "\n" not in message
    assert message.endswith(
        f"truncated or damaged; intact beside it: best-2.ckpt; continue from best-2.ckpt with "
        f"resume={checkpoints.parent} ckpt_path={checkpoints / 'best-2.ckpt'}"
    )
    (checkpoints / "best-2.ckpt").unlink()
    with pytest.raises(ResumeError, match=f"no other checkpoint in {checkpoints} loads: start a new run"):
        check_resume(cfg, last)


def test_resume_with_another_model_names_the_tensor_and_the_key(resumable) -> None:
    cfg, checkpoints = resumable
    OmegaConf.update(cfg, "model.generator.channels", 16)
    with pytest.raises(ResumeError) as refused:
        check_resume(cfg, checkpoints / "last.ckpt")
    assert str(refused.value) == (
        f"ckpt_path={checkpoints / 'last.ckpt'}: holds generator.image_branch.head.weight of shape (8, 3, 3, 3), "
        "this config builds (16, 3, 3, 3) (model.generator differs from the checkpoint's: channels: 8 -> 16); "
        "resume with the run's own model settings (its config_resolved.yaml), or start a new run"
    )
    OmegaConf.update(cfg, "model.generator.channels", 8)
    OmegaConf.update(cfg, "optim.ema_decay", 0.999)
    with pytest.raises(
        ResumeError, match=r"holds no EMA generator \(generator_ema\.\*\) but optim.ema_decay"
    ):
        check_resume(cfg, checkpoints / "last.ckpt")


LAYOUT_CHANGES = [  # (key, value, processes, what the refusal says)
    (
        "data.batch_size",
        4,
        1,
        "with its global batch of 2 (data.batch_size=4 here); resume with data.batch_size=2",
    ),
    ("data.batch_size", 2, 2, "on 1 process(es) (2 here); resume on 1 (trainer.devices x trainer.num_nodes)"),
    ("data.samples_per_epoch", 32, 1, "in epochs of 8 batches (data.samples_per_epoch=32 makes 16 here)"),
]


def test_resume_mid_epoch_refuses_another_loader_layout(resumable) -> None:
    cfg, checkpoints = resumable
    epoch_end = _smoke_checkpoint(cfg, checkpoints / "epoch-end.ckpt", batches=8)
    for key, value, world_size, says in LAYOUT_CHANGES:
        changed = cfg.copy()
        OmegaConf.update(changed, key, value)
        with pytest.raises(ResumeError) as refused:
            check_resume(changed, checkpoints / "last.ckpt", world_size=world_size)
        assert str(refused.value).startswith(
            f"ckpt_path={checkpoints / 'last.ckpt'}: stopped mid-epoch (batch 4 of 8), and the rest of that epoch "
            f"replays only {says}"
        )
        check_resume(changed, epoch_end, world_size=world_size)  # a finished epoch resumes with any layout


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # a smoke run stopped mid-epoch (~15 s), three refused resumes, and the advised one (~15 s)
def test_refused_resumes_leave_the_run_as_it_was_and_the_advice_continues_it(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    mid_epoch = [*SMOKE, *QUIET_HYDRA, "data.samples_per_epoch=16"]  # 4 of 8 batches when it stops
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dgggan_pl.train", *mid_epoch, f"hydra.run.dir={run}"])
    train.main()
    last = run / "checkpoints" / "last.ckpt"
    resume = [*mid_epoch, f"resume={run}", "iterations=8"]
    for change, says in (
        (
            "model.generator.channels=16",
            "holds generator.image_branch.head.weight of shape (8, 3, 3, 3), this",
        ),
        ("data.batch_size=4", "(data.batch_size=4 here); resume with data.batch_size=2, or start a new run"),
    ):
        before = _tree(run)
        exit_info = _hydra_train(monkeypatch, tmp_path, [*resume, change])
        assert str(exit_info.code).startswith(f"error: ckpt_path={last}: ") and says in str(exit_info.code)
        assert _tree(run) == before  # no record, config copy, log or lock of the refused attempt
    last.write_bytes(last.read_bytes()[:4096])
    before = _tree(run)
    message = str(_hydra_train(monkeypatch, tmp_path, resume).code)
    assert "\n" not in message and _tree(run) == before
    advised = message.split(" with ")[-1].split()  # resume=<run> ckpt_path=<run>/checkpoints/best-....ckpt
    assert message.startswith(f"error: ckpt_path={last}: cannot be loaded") and advised[0] == f"resume={run}"
    monkeypatch.setattr(sys, "argv", ["dgggan_pl.train", *mid_epoch, "iterations=8", *advised])
    train.main()
    record = json.loads((run / "run_info.json").read_text())
    assert record["status"] == "completed" and record["checkpoints"]["last"]["iteration"] == 8


@pytest.mark.slow  # the whole CLI in-process (~1.5 s under load)
def test_all_gpus_on_the_cpu_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch) -> None:
    """`trainer=ddp debug=smoke` on a machine without a GPU: devices=-1 (every GPU) with accelerator=cpu."""
    message = str(_hydra_train(monkeypatch, tmp_path, [*SMOKE, *QUIET_HYDRA, "trainer=ddp"]).code)
    assert message.startswith("error: trainer.") and "trainer.devices=-1" in message and "\n" not in message
    assert "set trainer.devices to a positive integer" in message and "hydra/launcher" not in message
    assert list(tmp_path.glob("outputs/*/runs/*")) == []  # the folder Hydra opened for it is gone
