"""The one fixed gradient operator G(.) of DGGGAN (docs/design.md#gradient-operator).

Generator, losses and the gradient critic all call this, so that "gradient" means the same thing everywhere.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)
DEFAULT_EPS = 1e-6  # docs/design.md#gradient-operator: sqrt(gx^2 + gy^2 + 1e-6), as SPSR; keeps sqrt differentiable at 0


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is on for `x`'s device (never on meta: shape-only runs have no autocast state)."""
    return x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)


def gradient_magnitude(x: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Per-channel gradient magnitude with the fixed kernels [1, 0, -1] and its transpose.

    Args:
        x: `(B, C, H, W)` float tensor (any C: images or feature maps).
        eps: added under the square root so the magnitude is differentiable on flat regions.

    Returns:
        `(B, C, H, W)`: sqrt(gx^2 + gy^2 + eps), zero padding 1 so the size is kept. Computed in float32
        (or wider) with autocast off: in bf16 a magnitude of 1e-3 is off by tens of percent, and eps = 1e-6
        is below bf16's resolution of the squares. The result is float32 under autocast (which casts for
        the next op itself) and in `x`'s dtype otherwise (a network kept in bf16/fp16 gets its own dtype).

    The kernels are applied as shifted differences of a zero-padded copy, which is exactly the
    cross-correlation with [1, 0, -1] (and its transpose) but needs no weight tensor per channel count.
    """
    if x.dim() != 4:
        raise ValueError(f"gradient_magnitude expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    autocast = autocast_on(x)
    with torch.autocast(device_type=x.device.type, enabled=False) if autocast else nullcontext():
        wide = x.float() if x.dtype in LOW_PRECISION else x
        padded = F.pad(wide, (1, 1, 1, 1))
        grad_x = padded[:, :, 1:-1, :-2] - padded[:, :, 1:-1, 2:]
        grad_y = padded[:, :, :-2, 1:-1] - padded[:, :, 2:, 1:-1]
        magnitude = torch.sqrt(grad_x.square() + grad_y.square() + eps)
    return magnitude if autocast else magnitude.to(x.dtype)


class GradientMagnitude(nn.Module):
    """`gradient_magnitude` as a parameter-free module (so it shows up in module trees and summaries)."""

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` -> `(B, C, H, W)` gradient magnitude."""
        return gradient_magnitude(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
