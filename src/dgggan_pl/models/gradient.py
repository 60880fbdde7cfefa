"""The one fixed gradient operator G(.) of DGGGAN (docs/design.md#gradient-operator).

Generator, losses and the gradient critic all call this, so that "gradient" means the same thing everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_EPS = 1e-6  # docs/design.md#gradient-operator: sqrt(gx^2 + gy^2 + 1e-6), as SPSR; keeps sqrt differentiable at 0


def gradient_magnitude(x: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Per-channel gradient magnitude with the fixed kernels [1, 0, -1] and its transpose.

    Args:
        x: `(B, C, H, W)` float tensor (any C: images or feature maps).
        eps: added under the square root so the magnitude is differentiable on flat regions.

    Returns:
        `(B, C, H, W)`: sqrt(gx^2 + gy^2 + eps), zero padding 1 so the size is kept.

    The kernels are applied as shifted differences of a zero-padded copy, which is exactly the
    cross-correlation with [1, 0, -1] (and its transpose) but needs no weight tensor per channel count.
    """
    if x.dim() != 4:
        raise ValueError(f"gradient_magnitude expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    padded = F.pad(x, (1, 1, 1, 1))
    grad_x = padded[:, :, 1:-1, :-2] - padded[:, :, 1:-1, 2:]
    grad_y = padded[:, :, :-2, 1:-1] - padded[:, :, 2:, 1:-1]
    return torch.sqrt(grad_x.square() + grad_y.square() + eps)


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
