"""`python -m dgggan_pl.prepare` on a small DIV2K-style folder built from the shared benchmark images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dgggan_pl.data.datasets import TrainPatchDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import ImageFolderError, list_images, read_image
from dgggan_pl.data.packed import PackedPairs
from dgggan_pl.data.subimages import WindowSpec, count_subimages
from dgggan_pl.data.transforms import mod_crop
from dgggan_pl.prepare import DONE_DIR, HR_SUBDIR, main, prepare

SCALE = 4
SOURCES = [("Set14", "barbara"), ("Set14", "comic"), ("Set5", "baby")]  # 720x576, 248x360, 512x512
SMALL = {"crop": 192, "step": 192, "threshold": 24}  # 25 sub-images: fast, and edge windows on every image
LR_SUBDIR = f"DIV2K_train_LR_bicubic_X{SCALE}_sub"
BORDER = 2  # the parity tolerance of tests/test_imresize.py
MIN_EXACT = 0.995


@pytest.fixture
def div2k_like(benchmark_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """`DIV2K_train_HR/0001.png ...` and `DIV2K_train_LR_bicubic/X4/0001x4.png ...`."""
    hr_dir, lr_dir = tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic" / "X4"
    hr_dir.mkdir()
    lr_dir.mkdir(parents=True)
    for index, (set_name, name) in enumerate(SOURCES, start=1):
        shutil.copy(benchmark_dir / set_name / "HR" / f"{name}.png", hr_dir / f"{index:04d}.png")
        shutil.copy(
            benchmark_dir / set_name / "LR_bicubic" / "X4" / f"{name}.png", lr_dir / f"{index:04d}x4.png"
        )
    return hr_dir, lr_dir


def _expected_count(hr_dir: Path, spec: WindowSpec) -> int:
    return sum(count_subimages(*mod_crop(read_image(p), SCALE).shape[-2:], spec) for p in list_images(hr_dir))


def _assert_close_interior(lr: torch.Tensor, hr: torch.Tensor) -> None:
    diff = (imresize(hr, scale=1 / SCALE).int() - lr.int()).abs()[:, BORDER:-BORDER, BORDER:-BORDER]
    assert diff.max() <= 1 and (diff == 0).float().mean() >= MIN_EXACT


def test_counts_names_and_alignment(div2k_like: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k_like
    out = tmp_path / "out"
    total, errors = prepare(hr_dir, out, lr_dir, workers=2, progress=False, **SMALL)
    assert errors == []
    assert total == _expected_count(hr_dir, WindowSpec(**SMALL)) == len(list_images(out / HR_SUBDIR))
    hr_subs, lr_subs = list_images(out / HR_SUBDIR), list_images(out / LR_SUBDIR)
    assert [p.name for p in hr_subs] == [p.name for p in lr_subs]
    assert hr_subs[0].name == "0001_s001.png"
    for hr_path, lr_path in zip(hr_subs, lr_subs, strict=True):
        hr, lr = read_image(hr_path), read_image(lr_path)
        assert hr.shape == (3, 192, 192) and lr.shape == (3, 48, 48)
        _assert_close_interior(lr, hr)


def test_default_windows_and_generated_lr(div2k_like: tuple[Path, Path], tmp_path: Path) -> None:
    """480/240/48 on real sizes; without an LR folder the LR sub-images are crops of the generated LR image."""
    hr_dir, _ = div2k_like
    (hr_dir / "0002.png").unlink()  # comic (248x360) is smaller than one 480x480 window
    total, errors = prepare(hr_dir, tmp_path / "gen", lr_dir=None, workers=1, progress=False)
    # barbara 576x720: rows [0, 96] (leftover 96 > 48), columns [0, 240]; baby 512x512: leftover 32 <= 48
    assert errors == [] and total == _expected_count(hr_dir, WindowSpec(480, 240, 48)) == 5
    hr = mod_crop(read_image(hr_dir / "0001.png"), SCALE)
    lr_sub = read_image(tmp_path / "gen" / LR_SUBDIR / "0001_s002.png")
    assert torch.equal(lr_sub, imresize(hr, scale=1 / SCALE)[:, 0:120, 60:180])  # barbara 576x720: (0, 240)


def test_resume_skips_finished_images(div2k_like: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k_like
    out = tmp_path / "out"
    first, _ = prepare(hr_dir, out, lr_dir, progress=False, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in list_images(out / HR_SUBDIR)}
    (out / DONE_DIR / "0002.json").unlink()
    second, errors = prepare(hr_dir, out, lr_dir, progress=False, **SMALL)
    assert errors == [] and second == first
    rewritten = {p.name.split("_")[0] for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert rewritten == {"0002"}
    with pytest.raises(ImageFolderError, match="other settings"):
        prepare(hr_dir, out, lr_dir, progress=False, crop=96, step=48, threshold=8)


def test_failure_leaves_nothing_half_written(div2k_like: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k_like
    good = (hr_dir / "0002.png").read_bytes()
    (hr_dir / "0002.png").write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "out"
    total, errors = prepare(hr_dir, out, lr_dir, workers=2, progress=False, **SMALL)
    assert len(errors) == 1 and "0002.png" in errors[0]
    for folder in (out / HR_SUBDIR, out / LR_SUBDIR):
        names = [p.name for p in folder.iterdir()]
        assert not any(n.startswith("0002_") or n.startswith(".") for n in names)
    assert not (out / DONE_DIR / "0002.json").exists()
    (hr_dir / "0002.png").write_bytes(good)
    fixed, errors = prepare(hr_dir, out, lr_dir, progress=False, **SMALL)
    assert errors == [] and fixed == _expected_count(hr_dir, WindowSpec(**SMALL)) > total


def test_bad_pairs_and_small_images_named(div2k_like: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k_like
    shutil.copy(lr_dir / "0001x4.png", lr_dir / "0003x4.png")  # wrong size for 0003
    _, errors = prepare(hr_dir, tmp_path / "a", lr_dir, progress=False, **SMALL)
    assert len(errors) == 1 and "0003x4.png" in errors[0] and "0003.png" in errors[0]
    _, errors = prepare(hr_dir, tmp_path / "b", None, progress=False, crop=560, step=280, threshold=40)
    assert len(errors) == 2 and all("smaller than" in e for e in errors)  # comic and baby


def test_cli_prints_count_and_packs(
    div2k_like: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hr_dir, lr_dir = div2k_like
    out = tmp_path / "out"
    args = [
        "--hr-dir",
        str(hr_dir),
        "--lr-dir",
        str(lr_dir),
        "--out-dir",
        str(out),
        "--workers",
        "1",
        "--pack",
    ]
    args += ["--crop", "192", "--step", "192", "--threshold", "24", "--no-progress"]
    assert main(args) == 0
    expected = _expected_count(hr_dir, WindowSpec(**SMALL))
    assert f"{expected} sub-images" in capsys.readouterr().out
    packed = PackedPairs(out / HR_SUBDIR, out / LR_SUBDIR, SCALE)
    assert len(packed) == expected
    png = list_images(out / HR_SUBDIR)
    for index in (0, expected - 1):
        lr, hr, _ = packed.load(index)
        assert torch.equal(hr, read_image(png[index]))
        assert torch.equal(lr, read_image(out / LR_SUBDIR / png[index].name))
    item = TrainPatchDataset(packed, scale=SCALE, hr_patch_size=64)[(0, 3)]
    assert item["hr"].shape == (3, 64, 64) and np.isfinite(item["lr"].numpy()).all()
