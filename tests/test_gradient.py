"""The fixed gradient operator G(.) (docs/design.md#gradient-operator): known inputs, the kernel definition, no parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dgggan_pl.models.gradient import DEFAULT_EPS, GradientMagnitude, gradient_magnitude


def _reference(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """The definition: depthwise cross-correlation with [1, 0, -1] and its transpose, zero padding 1."""
    channels = x.shape[1]
    kx = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    kernels = {"x": kx, "y": kx.T}
    gx, gy = (
        F.conv2d(x, k.expand(channels, 1, 3, 3).contiguous(), padding=1, groups=channels)
        for k in kernels.values()
    )
    return torch.sqrt(gx**2 + gy**2 + eps)


def test_constant_image_gives_sqrt_eps_inside() -> None:
    x = torch.full((2, 3, 9, 11), 0.7)
    magnitude = gradient_magnitude(x)
    interior = magnitude[..., 1:-1, 1:-1]
    torch.testing.assert_close(interior, torch.full_like(interior, math.sqrt(DEFAULT_EPS)))
    # Zero padding: the border sees a step from 0.7 to 0, so it is not flat.
    assert magnitude[..., 0, 5].min() > 0.5


def test_horizontal_ramp_gives_constant_interior_magnitude() -> None:
    slope = 0.05
    ramp = slope * torch.arange(16.0).expand(1, 3, 10, 16)
    interior = gradient_magnitude(ramp)[..., 1:-1, 1:-1]
    expected = math.sqrt((2 * slope) ** 2 + DEFAULT_EPS)  # |x[w-1] - x[w+1]| = 2 * slope, no vertical part
    torch.testing.assert_close(interior, torch.full_like(interior, expected))


def test_vertical_ramp_is_the_transpose() -> None:
    ramp = 0.1 * torch.arange(12.0).view(1, 1, 12, 1).expand(1, 2, 12, 12)
    magnitude = gradient_magnitude(ramp)
    torch.testing.assert_close(magnitude, gradient_magnitude(ramp.transpose(-1, -2)).transpose(-1, -2))


def test_matches_kernel_definition_including_borders() -> None:
    x = torch.rand(2, 5, 13, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gradient_magnitude(x), _reference(x))


def test_channels_are_independent() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[:, 1] = torch.rand(8, 8)
    magnitude = gradient_magnitude(x)
    torch.testing.assert_close(magnitude[:, 0], torch.full((1, 8, 8), math.sqrt(DEFAULT_EPS)))
    assert magnitude[:, 1].max() > 0.1


def test_module_has_no_parameters_and_matches_function() -> None:
    module = GradientMagnitude()
    assert list(module.parameters()) == []
    assert list(module.buffers()) == []
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(module(x), gradient_magnitude(x))


def test_gradients_are_finite_on_flat_regions() -> None:
    x = torch.full((1, 3, 6, 6), 0.5, requires_grad=True)
    gradient_magnitude(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rejects_non_4d_input() -> None:
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        gradient_magnitude(torch.rand(3, 8, 8))
