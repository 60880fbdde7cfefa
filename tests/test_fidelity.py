"""PSNR/SSIM on Y: the MATLAB conventions, independence from batching, and the published bicubic rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.methods import bicubic_upscaler
from dgggan_pl.metrics.fidelity import PSNRY, SSIMY, psnr_y, rgb_to_y, ssim_y, y_for_fidelity

# Bicubic x4 rows of EDSR/RCAN/RDN (PSNR dB, SSIM), and the tolerance of issue 4.
PUBLISHED_BICUBIC = {
    "Set5": (28.42, 0.8104),
    "Set14": (26.00, 0.7027),
    "BSD100": (25.96, 0.6675),
    "Urban100": (23.14, 0.6577),
}
PSNR_TOL, SSIM_TOL = 0.1, 0.005


def _pair(seed: int, shape=(2, 3, 40, 52)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hr = torch.rand(shape, generator=gen)
    return (hr + 0.08 * torch.randn(shape, generator=gen)).clamp(0, 1), hr


def test_y_is_matlab_bt601_studio_swing() -> None:
    black, white = (
        torch.zeros(1, 3, 1, 1, dtype=torch.float64),
        torch.full((1, 3, 1, 1), 255.0, dtype=torch.float64),
    )
    assert rgb_to_y(black).item() == pytest.approx(16.0)
    assert rgb_to_y(white).item() == pytest.approx(235.0)


def test_psnr_of_a_uniform_offset_matches_the_formula() -> None:
    hr = torch.full((1, 3, 20, 20), 100 / 255)
    sr = torch.full((1, 3, 20, 20), 110 / 255)
    y_step = 10 * (65.481 + 128.553 + 24.966) / 255  # Y difference of a 10-level RGB offset
    assert psnr_y(sr, hr, 4).item() == pytest.approx(20 * math.log10(255 / y_step), abs=1e-9)


def test_sr_is_rounded_to_8_bit_and_border_cropped() -> None:
    hr = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    hr = torch.round(hr * 255) / 255
    almost = hr + 0.4 / 255  # rounds back to hr
    assert torch.isinf(psnr_y(almost.clamp(0, 1), hr, 4)).all()
    broken_border = hr.clone()
    broken_border[..., :4, :] = 1 - broken_border[..., :4, :]
    assert torch.isinf(psnr_y(broken_border, hr, 4)).all()
    assert torch.isfinite(psnr_y(broken_border, hr, 3)).all()


def test_ssim_is_wang_et_al_on_the_valid_region() -> None:
    """Against an independent scipy implementation of MATLAB's ssim_index (filter2 'valid')."""
    sr, hr = _pair(1)
    x, y = (y_for_fidelity(t, 4)[0, 0].numpy() for t in (sr, hr))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(z: np.ndarray) -> np.ndarray:
        return correlate2d(z, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    assert ssim_y(sr, hr, 4)[0].item() == pytest.approx(ssim_map.mean(), abs=1e-10)


def test_per_image_values_do_not_depend_on_batching() -> None:
    sr, hr = _pair(2, (4, 3, 48, 40))
    for metric_cls in (PSNRY, SSIMY):
        batched, single = metric_cls(4), metric_cls(4)
        batched.update(sr, hr, list("abcd"))
        for i, name in enumerate("abcd"):
            single.update(sr[i : i + 1], hr[i : i + 1], [name])
        assert torch.equal(batched.per_image()[0], single.per_image()[0])
        assert batched.compute().item() == single.compute().item()


def _bicubic_row(benchmark_dir: Path, set_name: str) -> tuple[float, float]:
    upscale = bicubic_upscaler(4)
    psnr, ssim = PSNRY(4), SSIMY(4)
    for item in BenchmarkDataset(benchmark_dir / set_name, 4, "shipped"):
        sr, hr = upscale(item["lr"][None]), item["hr"][None]
        psnr.update(sr, hr, [item["name"]])
        ssim.update(sr, hr, [item["name"]])
    return psnr.compute().item(), ssim.compute().item()


@pytest.mark.parametrize(
    "set_name",
    [
        "Set5",
        "Set14",
        pytest.param("BSD100", marks=pytest.mark.slow),
        pytest.param("Urban100", marks=pytest.mark.slow),
    ],
)
def test_bicubic_reproduces_the_published_rows(benchmark_dir: Path, set_name: str) -> None:
    psnr, ssim = _bicubic_row(benchmark_dir, set_name)
    ref_psnr, ref_ssim = PUBLISHED_BICUBIC[set_name]
    assert abs(psnr - ref_psnr) <= PSNR_TOL, f"{set_name} bicubic PSNR {psnr:.3f} vs published {ref_psnr}"
    assert abs(ssim - ref_ssim) <= SSIM_TOL, f"{set_name} bicubic SSIM {ssim:.4f} vs published {ref_ssim}"
