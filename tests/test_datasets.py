"""Datasets: whole benchmark images and aligned training crops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import read_image

SCALE = 4


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_benchmark_shipped_items(benchmark_dir: Path) -> None:
    dataset = BenchmarkDataset(benchmark_dir / "Set5", scale=SCALE, lr_source="shipped")
    assert len(dataset) == 5
    names = []
    for item in dataset:
        lr, hr = item["lr"], item["hr"]
        assert lr.dtype == hr.dtype == torch.float32
        assert lr.shape[0] == hr.shape[0] == 3
        assert hr.shape[-2:] == (lr.shape[-2] * SCALE, lr.shape[-1] * SCALE)
        assert lr.min() >= 0 and lr.max() <= 1 and hr.min() >= 0 and hr.max() <= 1
        names.append(item["name"])
    assert names == sorted(["baby", "bird", "butterfly", "head", "woman"])


def test_benchmark_grayscale_becomes_rgb(benchmark_dir: Path) -> None:
    dataset = BenchmarkDataset(benchmark_dir / "Set14", scale=SCALE)
    item = dataset[[p.stem for p in dataset.hr_paths].index("bridge")]
    assert item["hr"].shape[0] == 3 and torch.equal(item["hr"][0], item["hr"][2])


def test_benchmark_generated_lr_is_imresize_of_modcropped_hr(tmp_path: Path) -> None:
    hr = np.random.default_rng(0).integers(0, 256, (37, 42, 3), dtype=np.uint8)
    _write(tmp_path / "Mini" / "HR" / "a.png", hr)
    item = BenchmarkDataset(tmp_path / "Mini", scale=SCALE, lr_source="generated")[0]
    assert item["hr"].shape == (3, 36, 40)  # mod-cropped
    expected = imresize(read_image(tmp_path / "Mini" / "HR" / "a.png")[:, :36, :40], scale=1 / SCALE)
    assert torch.equal((item["lr"] * 255).round().to(torch.uint8), expected)


def test_benchmark_size_mismatch_names_files(tmp_path: Path) -> None:
    _write(tmp_path / "S" / "HR" / "a.png", np.zeros((32, 32, 3), np.uint8))
    _write(tmp_path / "S" / "LR_bicubic" / "X4" / "a.png", np.zeros((9, 8, 3), np.uint8))
    dataset = BenchmarkDataset(tmp_path / "S", scale=SCALE)
    with pytest.raises(ValueError, match=r"HR/a\.png.*LR_bicubic/X4/a\.png"):
        dataset[0]


def test_benchmark_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        BenchmarkDataset(tmp_path / "Nope")
    (tmp_path / "E" / "HR").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no images"):
        BenchmarkDataset(tmp_path / "E")
    _write(tmp_path / "L" / "HR" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "L" / "HR" / "b.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "L" / "LR_bicubic" / "X4" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"b\.png.*lr_source=generated"):
        BenchmarkDataset(tmp_path / "L")
    with pytest.raises(ValueError, match="lr_source"):
        BenchmarkDataset(tmp_path / "L", lr_source="bilinear")


def test_benchmark_corrupt_image_named(tmp_path: Path) -> None:
    _write(tmp_path / "C" / "HR" / "a.png", np.zeros((8, 8, 3), np.uint8))
    shutil.copy(tmp_path / "C" / "HR" / "a.png", tmp_path / "C" / "HR" / "b.png")
    (tmp_path / "C" / "HR" / "b.png").write_bytes(b"garbage")
    dataset = BenchmarkDataset(tmp_path / "C", lr_source="generated")
    with pytest.raises(OSError, match=r"b\.png"):
        dataset[1]
