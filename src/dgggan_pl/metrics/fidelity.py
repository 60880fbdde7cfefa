"""PSNR and SSIM on the Y channel, as the SR literature computes them (DESIGN.md section 6).

The published tables (EDSR, RCAN, RDN, ESRGAN, SPSR, DGGGAN) evaluate 8-bit images on the Y channel of
MATLAB's `rgb2ycbcr` (BT.601, studio swing, *not* rounded: `rgb2ycbcr(im2double(img))`), after shaving
`scale` pixels from every border, with Wang et al.'s SSIM (11x11 Gaussian, sigma 1.5, 'valid' region,
K1 = 0.01, K2 = 0.03, L = 255). Each function returns one value per image so that the caller averages
per image (the papers' convention), never pixel-pooled.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from dgggan_pl.metrics.per_image import PerImageMetric

# MATLAB rgb2ycbcr (ITU-R BT.601 studio swing) for RGB in [0, 1], giving Y in [16, 235].
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]).
_GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
PIXEL_MAX = 255.0


def _check_rgb(image: Tensor, name: str = "image") -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(image.shape)}")


def matlab_round(x: Tensor) -> Tensor:
    """MATLAB's rounding (half away from zero) for non-negative values; torch.round rounds half to even."""
    return torch.floor(x + 0.5)


def quantize_8bit(image: Tensor) -> Tensor:
    """`(B, 3, H, W)` float in [0, 1] -> the same image as saved to an 8-bit PNG, as float64 in [0, 255]."""
    return matlab_round(image.detach().to(torch.float64).clamp(0.0, 1.0) * PIXEL_MAX)


def rgb_to_y(image_255: Tensor) -> Tensor:
    """`(B, 3, H, W)` RGB float in [0, 255] -> `(B, 1, H, W)` Y of MATLAB `rgb2ycbcr(im2double(.))` x 255."""
    weights = image_255.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return _Y_OFFSET + (image_255 / PIXEL_MAX * weights).sum(dim=1, keepdim=True)


def rgb_to_y_uint8(image_255: Tensor) -> Tensor:
    """Y of MATLAB `rgb2ycbcr` applied to a uint8 image: the Y plane rounded to integers (PIRM convention)."""
    return matlab_round(rgb_to_y(image_255))


def rgb_to_gray_uint8(image_255: Tensor) -> Tensor:
    """MATLAB `rgb2gray` of a uint8 image, `(B, 3, H, W)` in [0, 255] -> `(B, 1, H, W)` integers as float64."""
    weights = image_255.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return matlab_round((image_255 * weights).sum(dim=1, keepdim=True))


def crop_border(image: Tensor, border: int) -> Tensor:
    """Shave `border` pixels from each side of `(..., H, W)` (the SR convention: border = scale)."""
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return image
    if image.shape[-2] <= 2 * border or image.shape[-1] <= 2 * border:
        raise ValueError(
            f"image of size {tuple(image.shape[-2:])} is too small to crop {border} px per border"
        )
    return image[..., border:-border, border:-border]


def y_for_fidelity(image: Tensor, border: int) -> Tensor:
    """`(B, 3, H, W)` float in [0, 1] -> cropped `(B, 1, H', W')` float64 Y in [16, 235] of the 8-bit image."""
    _check_rgb(image)
    return crop_border(rgb_to_y(quantize_8bit(image)), border)


def psnr_y(sr: Tensor, hr: Tensor, border: int) -> Tensor:
    """Per-image PSNR (dB) on Y, `(B, 3, H, W)` in [0, 1] each -> `(B,)` float64."""
    sr_y, hr_y = y_for_fidelity(sr, border), y_for_fidelity(hr, border)
    return peak_signal_noise_ratio(sr_y, hr_y, data_range=PIXEL_MAX, reduction="none", dim=(1, 2, 3))


def ssim_y(sr: Tensor, hr: Tensor, border: int, kernel_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM on Y, `(B, 3, H, W)` in [0, 1] each -> `(B,)` float64.

    torchmetrics averages the SSIM map over the whole (reflect-padded) image; MATLAB's `ssim_index` and
    BasicSR average only the 'valid' region, so the map is taken and its `kernel_size // 2` rim dropped.
    """
    sr_y, hr_y = y_for_fidelity(sr, border), y_for_fidelity(hr, border)
    _, ssim_map = structural_similarity_index_measure(
        sr_y,
        hr_y,
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=kernel_size,
        data_range=PIXEL_MAX,
        reduction="none",
        return_full_image=True,
    )
    return crop_border(ssim_map, kernel_size // 2).flatten(1).mean(dim=1)


class PSNRY(PerImageMetric):
    """Mean per-image PSNR (dB) on Y with `crop_border` px shaved; higher is better."""

    higher_is_better = True

    def __init__(self, crop_border: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop_border = crop_border

    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        return psnr_y(sr, hr, self.crop_border)


class SSIMY(PerImageMetric):
    """Mean per-image SSIM on Y (Gaussian `kernel_size` window, `sigma`); higher is better."""

    higher_is_better = True

    def __init__(self, crop_border: int, kernel_size: int = 11, sigma: float = 1.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop_border, self.kernel_size, self.sigma = crop_border, kernel_size, sigma

    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        return ssim_y(sr, hr, self.crop_border, self.kernel_size, self.sigma)
