"""MATLAB-compatible bicubic `imresize` in torch.

Super-resolution benchmarks and DIV2K's LR images were made with MATLAB's `imresize(img, s, 'bicubic')`.
PSNR figures only compare with published ones when our LR images are the same pixels, and neither PIL
(no rounding between passes) nor `torch.nn.functional.interpolate` (a = -0.75, no antialiasing) gives
them. This module re-implements MATLAB's algorithm (`imresize.m`, `contributions` and `resizeAlongDim`):

* cubic kernel with a = -0.5, widened by 1/scale when shrinking (antialiasing);
* out-of-range taps mirrored (symmetric padding, MATLAB's `aux = [1:in, in:-1:1]` index trick);
* separable 1-D passes, the dimension with the smallest scale factor first (height first on ties);
* for uint8 input, rounding to uint8 after EACH pass (half away from zero, saturating), as MATLAB does.

Each pass is a dense (out, in) weight matrix applied with one matmul, so batches and GPUs come for free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# MATLAB's cubic kernel support is [-2, 2] (`kernel_width = 4` in imresize.m).
_CUBIC_SUPPORT = 4.0
_CUBIC_A = -0.5  # Keys' cubic with a = -0.5 (MATLAB); torch/OpenCV default to -0.75
_UINT8_MAX = 255.0


def cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5, as in MATLAB's imresize."""
    a = _CUBIC_A
    absx = x.abs()
    absx2 = absx**2
    absx3 = absx**3
    near = ((a + 2) * absx3 - (a + 3) * absx2 + 1) * (absx <= 1)
    far = (a * absx3 - 5 * a * absx2 + 8 * a * absx - 4 * a) * ((absx > 1) & (absx <= 2))
    return near + far


def resize_weights(
    in_length: int,
    out_length: int,
    scale: float,
    *,
    antialias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The `(out_length, in_length)` matrix of one 1-D MATLAB bicubic pass.

    Mirrors MATLAB's `contributions`: output pixel i (1-based) sits at input coordinate
    `i / scale + 0.5 * (1 - 1 / scale)`; taps outside [1, in_length] are reflected symmetrically and
    their weights accumulated on the reflected pixel; each row sums to one.
    """
    kernel_width = _CUBIC_SUPPORT
    shrink = scale < 1 and antialias
    if shrink:
        kernel_width /= scale
    out_pos = torch.arange(1, out_length + 1, dtype=torch.float64)
    center = out_pos / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(center - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based input indices
    dist = center[:, None] - indices
    weights = scale * cubic(scale * dist) if shrink else cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric padding: index k (1-based) maps onto [1:in, in:-1:1] periodically.
    period = 2 * in_length
    mirrored = torch.remainder(indices.long() - 1, period)
    mirrored = torch.where(mirrored >= in_length, period - 1 - mirrored, mirrored)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    matrix.scatter_add_(1, mirrored, weights)
    return matrix.to(dtype)


def _round_uint8(x: Tensor) -> Tensor:
    """MATLAB's double -> uint8 conversion: round half away from zero, saturate to [0, 255]."""
    return torch.floor(x + 0.5).clamp_(0, _UINT8_MAX)


def _resolve_sizes(
    height: int, width: int, scale: float | tuple[float, float] | None, output_size: tuple[int, int] | None
) -> tuple[tuple[float, float], tuple[int, int]]:
    """MATLAB's rule: a scale gives `ceil(scale * size)`; an output size gives the scale `out / in`."""
    if (scale is None) == (output_size is None):
        raise ValueError("imresize: give exactly one of `scale` and `output_size`")
    if output_size is not None:
        out_h, out_w = (int(v) for v in output_size)
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: output_size must be positive, got {output_size}")
        return (out_h / height, out_w / width), (out_h, out_w)
    assert scale is not None  # exactly one of scale and output_size, checked above
    scale_h, scale_w = (float(scale), float(scale)) if isinstance(scale, (int, float)) else map(float, scale)
    if scale_h <= 0 or scale_w <= 0:
        raise ValueError(f"imresize: scale must be positive, got {scale}")
    return (scale_h, scale_w), (math.ceil(scale_h * height), math.ceil(scale_w * width))


def imresize(
    image: Tensor,
    scale: float | tuple[float, float] | None = None,
    output_size: tuple[int, int] | None = None,
    *,
    antialias: bool = True,
) -> Tensor:
    """Resize like MATLAB's `imresize(image, scale, 'bicubic')`.

    Args:
        image: `(C, H, W)` or `(B, C, H, W)`, uint8 (MATLAB uint8 semantics: output rounded to uint8 after each
            pass) or floating point (no rounding, no clamping; output in the input's dtype).
        scale: factor (or `(scale_h, scale_w)`); `0.25` shrinks x4, `4` enlarges x4. Output size
            `ceil(scale * size)` as in MATLAB.
        output_size: `(H_out, W_out)` instead of a scale.
        antialias: widen the kernel when shrinking (MATLAB's default `Antialiasing=true` for bicubic).

    Returns:
        The resized tensor, same rank, dtype and device as `image`.
    """
    if image.dim() not in (3, 4):
        raise ValueError(f"imresize expects (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    is_uint8 = image.dtype == torch.uint8
    if not is_uint8 and not image.is_floating_point():
        raise TypeError(f"imresize supports uint8 or floating point tensors, got {image.dtype}")
    height, width = image.shape[-2:]
    (scale_h, scale_w), (out_h, out_w) = _resolve_sizes(height, width, scale, output_size)
    # uint8 parity needs double precision before rounding (MATLAB works in double).
    work_dtype = torch.float64 if is_uint8 else image.dtype
    x = image.to(work_dtype)
    # MATLAB resizes the dimension with the smallest scale factor first; a stable sort keeps height first on ties.
    order = ("h", "w") if scale_h <= scale_w else ("w", "h")
    for dim in order:
        if dim == "h":
            weights = resize_weights(height, out_h, scale_h, antialias=antialias, dtype=work_dtype)
            x = torch.matmul(weights.to(x.device), x)
        else:
            weights = resize_weights(width, out_w, scale_w, antialias=antialias, dtype=work_dtype)
            x = torch.matmul(x, weights.to(x.device).T)
        if is_uint8:
            x = _round_uint8(x)
    return x.to(torch.uint8) if is_uint8 else x
