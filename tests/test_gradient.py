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


# A smooth ramp, as a well-trained SR image has in flat regions: 0.3 + 0.00065 per pixel along W, so the
# central difference is 0.0013 and the true magnitude sqrt(0.0013^2 + eps) = 0.00164.
RAMP_STEP = 0.00065
RAMP_MAGNITUDE = math.sqrt((2 * RAMP_STEP) ** 2 + DEFAULT_EPS)


def _ramp(size: int = 24) -> torch.Tensor:
    row = 0.3 + RAMP_STEP * torch.arange(size, dtype=torch.float64)
    return row.expand(1, 3, size, size).float().contiguous()


def _interior(g: torch.Tensor) -> torch.Tensor:
    return g[:, :, 2:-2, 2:-2]


def test_bf16_input_under_autocast_is_computed_in_float32() -> None:
    x = _ramp().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gradient_magnitude(x)
    assert g.dtype == torch.float32
    assert torch.equal(g, gradient_magnitude(x.float()))  # not bf16 arithmetic on the squares and the root
    assert gradient_magnitude(x).dtype == torch.bfloat16  # no autocast: a bf16 network gets its own dtype


def test_sr_of_the_generator_stays_smooth_under_bf16_autocast() -> None:
    """The output conv runs outside autocast, so G(SR) of a ramp SR is the true 0.00164 (eq. 7's mu term
    and the gradient critic see it); a conv inside autocast rounds the ramp into bf16 steps first."""
    from dgggan_pl.models.blocks import outside_autocast
    from dgggan_pl.models.generator import GeneratorOutput
    from dgggan_pl.objective import InputPairs

    identity = torch.nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        identity.bias.zero_()
    ramp = _ramp()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = outside_autocast(identity, ramp)
        rounded = identity(ramp)
        g_kept = InputPairs(GeneratorOutput(kept, None), ramp)["sr_gradient"][0]
        g_rounded = InputPairs(GeneratorOutput(rounded, None), ramp)["sr_gradient"][0]
    assert kept.dtype == g_kept.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    torch.testing.assert_close(_interior(g_kept), torch.full_like(_interior(g_kept), RAMP_MAGNITUDE))
    error = (_interior(g_rounded) - RAMP_MAGNITUDE).abs().max().item()
    assert error > 0.1 * RAMP_MAGNITUDE  # the staircase the fix avoids (0.0022 or 0.0010 instead)


def test_generator_outputs_are_float32_under_bf16_autocast() -> None:
    from dgggan_pl.models.generator import DGGGANGenerator

    torch.manual_seed(0)
    generator = DGGGANGenerator(channels=8, num_blocks=2, injection_blocks=[1], se_reduction=4)
    lr = torch.rand(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generator(lr)
    assert out.sr.dtype == torch.float32 and out.grad_map is not None and out.grad_map.dtype == torch.float32
    reference = generator(lr)  # float32 throughout: the bf16 trunk moves the result, but only a little
    torch.testing.assert_close(out.sr, reference.sr, rtol=0, atol=0.05)
