"""NIQE: calibration against the official LIVE MATLAB release, conventions, batching, model file handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgggan_pl.metrics.fidelity import rgb_to_gray_uint8
from dgggan_pl.metrics.niqe import NIQE, NIQEModelError, NIQEScore, load_pristine_model, niqe_input

SHA = "fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d"
# Official MATLAB niqe_release (rgb2gray input) on IQA-PyTorch's calibration images:
# chaofengc/IQA-PyTorch ResultsCalibra/calibration_summary.csv, row `niqe`.
MATLAB_NIQE = {"I03": 15.7536, "I04": 3.6549, "I06": 3.2355, "I08": 3.1840, "I19": 8.6352}
ISSUE_TOLERANCE = 0.06  # issue 4: within 6 % per image
PORT_TOLERANCE = 0.01  # what this port achieves (max 0.57 %, docs/metrics.md), with headroom


@pytest.fixture(scope="module")
def model_path(data_dir: Path) -> Path:
    return data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"


@pytest.fixture(scope="module")
def niqe(model_path: Path) -> NIQE:
    return NIQE(*load_pristine_model(model_path, None, SHA))


def _read(path: Path) -> torch.Tensor:
    """`(1, 3, H, W)` float64 in [0, 255]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].double()


def test_official_convention_matches_matlab(niqe: NIQE, data_dir: Path) -> None:
    for name, reference in MATLAB_NIQE.items():
        image = _read(data_dir / "iqa-calibration" / "dist_dir" / f"{name}.bmp")
        value = niqe(rgb_to_gray_uint8(image)).item()
        error = abs(value - reference) / reference
        assert error <= ISSUE_TOLERANCE and error <= PORT_TOLERANCE, (
            f"{name}: {value:.4f} vs MATLAB {reference}"
        )


def test_batch_equals_one_by_one(niqe: NIQE) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 200, 300, generator=gen)
    images[1, :, :100] = 0.5  # a flat region: MSCN noise must not make results batch-dependent
    batched = NIQEScore(niqe, "pirm", 4)
    batched.update(images, images, ["a", "b", "c"])
    single = NIQEScore(niqe, "pirm", 4)
    for i, name in enumerate("abc"):
        single.update(images[i : i + 1], images[i : i + 1], [name])
    assert torch.equal(batched.per_image()[0], single.per_image()[0])


def test_conventions_pick_the_plane_and_crop() -> None:
    image = torch.rand(1, 3, 120, 130, generator=torch.Generator().manual_seed(1))
    official, pirm = niqe_input(image, "official", 4), niqe_input(image, "pirm", 4)
    assert official.shape == (1, 1, 120, 130) and pirm.shape == (1, 1, 112, 122)
    assert torch.equal(official, official.round()) and torch.equal(pirm, pirm.round())  # uint8 planes
    assert pirm.min() >= 16 and pirm.max() <= 235  # studio-swing Y
    with pytest.raises(ValueError, match="convention"):
        niqe_input(image, "matlab", 4)


def test_too_small_image_is_a_clear_error(niqe: NIQE) -> None:
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        niqe(torch.rand(1, 1, 100, 100) * 255)


def test_model_download_verifies_the_checksum(model_path: Path, tmp_path: Path) -> None:
    url = model_path.resolve().as_uri()  # a file:// URL: exercises the download path offline
    target = tmp_path / "cache" / "niqe.mat"
    mu, cov = load_pristine_model(target, url, SHA)
    assert target.is_file() and mu.shape == (36,) and cov.shape == (36, 36)
    other = tmp_path / "other.mat"
    with pytest.raises(NIQEModelError, match="expected"):
        load_pristine_model(other, url, "0" * 64)
    assert not other.exists() and not list(tmp_path.glob("other.mat*.part"))


def test_missing_model_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "modelparameters.mat"
    with pytest.raises(NIQEModelError, match=str(missing)):
        load_pristine_model(missing, None, SHA)
    with pytest.raises(NIQEModelError, match="downloading"):
        load_pristine_model(missing, "http://127.0.0.1:9/modelparameters.mat", SHA)


def test_corrupt_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "modelparameters.mat"
    bad.write_bytes(b"not a mat file")
    with pytest.raises(NIQEModelError, match="sha256"):
        load_pristine_model(bad, None, SHA)
