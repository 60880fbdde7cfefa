"""Tiled inference equals untiled inference (SE included) and its receptive radii are what the docs say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgggan_pl.models.generator import DGGGANGenerator
from dgggan_pl.tiling import (
    count_tile_steps,
    decode,
    encode,
    hr_stage_radius,
    map_tiles,
    receptive_radius,
    upscale_tiled,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(use_gradient_branch: bool = True, use_se: bool = True, num_blocks: int = 2) -> DGGGANGenerator:
    torch.manual_seed(0)
    # init_scale 1 (not 0.1): larger activations make any tiling error visible.
    return DGGGANGenerator(
        channels=8,
        num_blocks=num_blocks,
        injection_blocks=(1,),
        se_reduction=4,
        use_gradient_branch=use_gradient_branch,
        use_se=use_se,
        init_scale=1.0,
    ).eval()


@pytest.mark.parametrize("use_gradient_branch", [True, False])
def test_split_matches_forward(use_gradient_branch: bool) -> None:
    generator = _tiny(use_gradient_branch)
    lr = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        expected = generator(lr)
        actual = decode(generator, encode(generator, lr))
    torch.testing.assert_close(actual.sr, expected.sr, rtol=0, atol=1e-6)
    if use_gradient_branch:
        torch.testing.assert_close(actual.grad_map, expected.grad_map, rtol=0, atol=1e-6)
    else:
        assert actual.grad_map is None


@pytest.mark.parametrize("use_gradient_branch", [True, False])
def test_tiled_equals_untiled(use_gradient_branch: bool) -> None:
    generator = _tiny(use_gradient_branch)
    lr = torch.rand(2, 3, 37, 45)  # not a multiple of the tile: partial tiles on two edges
    with torch.no_grad():
        expected = generator(lr).sr
    calls: list[tuple[int, int]] = []
    tiled = upscale_tiled(generator, lr, tile=8, progress=lambda done, total: calls.append((done, total)))
    assert tiled.shape == expected.shape == (2, 3, 148, 180)
    assert (tiled - expected).abs().max() <= 1e-5  # the goal is 1/255; this is far tighter
    total = count_tile_steps(generator, 37, 45, 8)
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_too_small_overlap_shows_seams() -> None:
    generator = _tiny()
    lr = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        expected = generator(lr).sr
    with pytest.warns(UserWarning, match="receptive radius 2"):
        tiled = upscale_tiled(generator, lr, tile=8, overlap=0)
    assert (tiled - expected).abs().max() > 1e-2


def test_receptive_radii_match_the_architecture() -> None:
    # HR stage: 3x3 convs after nearest x2, x2 and at x4 -> 2 LR pixels (the default overlap).
    assert hr_stage_radius(_tiny()) == 2
    assert hr_stage_radius(_tiny(use_gradient_branch=False)) == 2
    # Whole network without SE (with SE it is the whole image): 4 per block (two 5x5 in a row), head 1,
    # G(LR) 1, trunk 1, tail 2 -> 4 * num_blocks + 5; 45 LR pixels for the default 10 blocks.
    for num_blocks in (1, 3):
        generator = _tiny(use_se=False, num_blocks=num_blocks)
        whole = receptive_radius(lambda x, g=generator: g(x).sr, [torch.empty(1, 3, 1, 1)], CPU, scale=4)
        assert whole == 4 * num_blocks + 5


def test_map_tiles_needs_the_halo() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 5, padding=2))
    x = torch.randn(1, 2, 13, 11)
    with torch.no_grad():
        expected = conv(x)
        assert receptive_radius(conv, [x], CPU) == 3
        exact = map_tiles(conv, [x], tile=4, halo=3, device=CPU)
        short = map_tiles(conv, [x], tile=4, halo=2, device=CPU)
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-6)
    assert (short - expected).abs().max() > 1e-3


def test_weights_made_in_inference_mode_are_a_clear_error() -> None:
    with torch.inference_mode():
        generator = _tiny()
    with pytest.raises(ValueError, match="outside inference_mode"):
        upscale_tiled(generator, torch.rand(1, 3, 8, 8), tile=4)
