"""PSNR and SSIM on the Y channel, as the SR literature computes them (docs/metrics.md).

The published tables (EDSR, RCAN, RDN, ESRGAN, SPSR, DGGGAN) evaluate 8-bit images on the Y channel of
MATLAB's `rgb2ycbcr` (BT.601, studio swing, *not* rounded: `rgb2ycbcr(im2double(img))`), after shaving
`scale` pixels from every border, with Wang et al.'s SSIM (11x11 Gaussian, sigma 1.5, 'valid' region,
K1 = 0.01, K2 = 0.03, L = 255), all in float64. Each function returns one value per image so that the caller averages
per image (the papers' convention), never pixel-pooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dgggan_pl.metrics.per_image import PerImageMetric

# MATLAB rgb2ycbcr (ITU-R BT.601 studio swing) for RGB in [0, 1], giving Y in [16, 235].
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]).
_GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
PIXEL_MAX = 255.0
# SSIM stabilisers of Wang et al. 2004 (ssim_index.m defaults)
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


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
    """Per-image PSNR (dB) on Y, `(B, 3, H, W)` in [0, 1] each -> `(B,)` float64 (inf for identical images).

    Written out rather than torchmetrics' `peak_signal_noise_ratio`, which keeps its data range in float32
    (a 1e-6 dB drift) - the published tables are compared to 0.01 dB.
    """
    sr_y, hr_y = y_for_fidelity(sr, border), y_for_fidelity(hr, border)
    mse = (sr_y - hr_y).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(PIXEL_MAX**2 / mse)


def gaussian_kernel_1d(size: int, sigma: float) -> Tensor:
    """The normalised 1-D Gaussian whose outer product is MATLAB's `fspecial('gaussian', size, sigma)`."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def filter_valid(image: Tensor, kernel: Tensor) -> Tensor:
    """Separable 'valid' correlation of `(..., H, W)` with `kernel (k,)` along W then H (MATLAB `filter2(.., 'valid')`)."""
    size = kernel.numel()
    return (image.unfold(-1, size, 1) @ kernel).unfold(-2, size, 1) @ kernel


def ssim_y(sr: Tensor, hr: Tensor, border: int, kernel_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM on Y, `(B, 3, H, W)` in [0, 1] each -> `(B,)` float64.

    Wang et al.'s `ssim_index.m` (K1 = 0.01, K2 = 0.03, L = 255, mean over the 'valid' region). Not torchmetrics'
    SSIM: it averages over a reflect-padded full image and its 121-tap grouped conv is ~10x slower in float64.
    """
    x, y = y_for_fidelity(sr, border), y_for_fidelity(hr, border)
    kernel = gaussian_kernel_1d(kernel_size, sigma).to(x.device)
    c1, c2 = (_SSIM_K1 * PIXEL_MAX) ** 2, (_SSIM_K2 * PIXEL_MAX) ** 2
    mu_x, mu_y, xx, yy, xy = filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel).unbind(dim=1)
    var_x, var_y, cov_xy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


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
