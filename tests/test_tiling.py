"""Tiled inference equals untiled inference (SE and the global skip included), drives the generator's own
stage methods, and its receptive radii are what the docs say."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dgggan_pl.data.io import quantize_uint8
from dgggan_pl.models.generator import (
    DGGGANGenerator,
    GlobalSkip,
    LRFeatures,
    Run,
    apply,
    bicubic_upsample,
)
from dgggan_pl.probes import NonFiniteOutput, UnboundedReach, receptive_radius
from dgggan_pl.tiling import (
    count_local_ops,
    count_tile_steps,
    encode_tiled,
    estimate_memory,
    hr_stage_radius,
    map_tiles,
    plan_tiling,
    super_resolve,
    upscale_tiled,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(
    use_gradient_branch: bool = True,
    use_se: bool = True,
    num_blocks: int = 2,
    global_skip: GlobalSkip = "none",
) -> DGGGANGenerator:
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
        global_skip=global_skip,
    ).eval()


VARIANTS = [
    pytest.param({}, id="full"),
    pytest.param({"use_se": False}, id="no_se"),
    pytest.param({"use_gradient_branch": False}, id="no_grad"),
    pytest.param({"global_skip": "bicubic"}, id="bicubic"),
    pytest.param(
        {"global_skip": "bicubic", "use_gradient_branch": False, "use_se": False}, id="bicubic_bare"
    ),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiled_encode_equals_encode(variant: dict) -> None:
    """The LR stage, op by op on tiles with the maps updated in place, gives the forward's LR features."""
    generator = _tiny(**variant)
    lr = torch.rand(2, 3, 21, 19)
    with torch.no_grad():
        expected = generator.encode(lr)
        tiled = encode_tiled(generator, lr, tile=8)
    assert (tiled.gradient is None) == (expected.gradient is None) == (not generator.use_gradient_branch)
    for actual, wanted in zip(tiled, expected, strict=True):
        if wanted is not None:
            torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiled_equals_untiled(variant: dict) -> None:
    generator = _tiny(**variant)
    lr = torch.rand(2, 3, 37, 45)  # not a multiple of the tile: partial tiles on two edges
    with torch.no_grad():
        expected = generator(lr).sr
    calls: list[tuple[int, int]] = []
    tiled = upscale_tiled(generator, lr, tile=8, progress=lambda done, total: calls.append((done, total)))
    assert tiled.shape == expected.shape == (2, 3, 148, 180)
    assert (tiled - expected).abs().max() <= 1e-5  # float rounding (often 0); the goal is 1/255
    total = count_tile_steps(generator, 37, 45, 8)
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_tiles_go_straight_into_a_uint8_image() -> None:
    generator = _tiny(global_skip="bicubic")
    lr = torch.rand(1, 3, 19, 23)
    expected = quantize_uint8(upscale_tiled(generator, lr, tile=8))
    tiled = upscale_tiled(generator, lr, tile=8, to_uint8=True)
    assert tiled.dtype == torch.uint8 and torch.equal(tiled, expected)
    assert tiled.permute(0, 2, 3, 1).is_contiguous()  # (B, H, W, 3) memory: what Pillow takes as is


def test_channels_last_model_tiles_in_channels_last() -> None:
    generator = _tiny()
    lr = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        expected = generator(lr).sr
    tiled = upscale_tiled(generator.to(memory_format=torch.channels_last), lr, tile=8)
    assert tiled.is_contiguous(memory_format=torch.channels_last)
    assert (tiled - expected).abs().max() <= 1e-5  # other conv kernels: float rounding only


class _OneMoreOp(DGGGANGenerator):
    """An architecture change made in the generator alone: one more local op in the LR stage."""

    def encode(self, lr: Tensor, run: Run = apply, *, inplace: bool = False) -> LRFeatures:
        features = super().encode(lr, run, inplace=inplace)
        return LRFeatures(run(self.image_branch.trunk, features.image), features.gradient)


def test_tile_steps_are_counted_on_the_generator_not_hard_coded() -> None:
    # heads 2, blocks 2 x 2, one injection, trunks 2
    assert count_local_ops(_tiny()) == 9 and count_local_ops(_tiny(use_gradient_branch=False)) == 4
    torch.manual_seed(0)
    generator = _OneMoreOp(channels=8, num_blocks=2, injection_blocks=(1,), se_reduction=4).eval()
    assert count_local_ops(generator) == 10
    lr = torch.rand(1, 3, 20, 12)
    calls: list[int] = []
    tiled = upscale_tiled(generator, lr, tile=4, progress=lambda done, total: calls.append(total))
    assert len(calls) == calls[0] == count_tile_steps(generator, 20, 12, 4)
    with torch.no_grad():
        assert (tiled - generator(lr).sr).abs().max() <= 1e-5  # the tiled path followed the change


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
    # The global skip is part of the HR stage (the LR tile is one of its inputs): bicubic reads 2 LR pixels.
    assert hr_stage_radius(_tiny(global_skip="bicubic")) == 2
    assert receptive_radius(lambda x: bicubic_upsample(x, 4), [torch.empty(1, 3, 1, 1)], CPU, scale=4) == 2
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


@pytest.mark.parametrize(("use_gradient_branch", "maps"), [(True, 3), (False, 2)])
def test_memory_estimate_counts_the_whole_image_maps(use_gradient_branch: bool, maps: int) -> None:
    """branches + 1 C-channel float maps and the LR input in the LR stage (the heads are recomputed, not held),
    counted on the generator's own encode; uint8 output; tile grows with tile."""
    generator = _tiny(use_gradient_branch)
    estimate = estimate_memory(generator, 100, 60, tile=16)
    assert estimate.lr_stage == (3 + maps * 8) * 100 * 60 * 4
    assert estimate.hr_stage == (3 + (maps - 1) * 8) * 100 * 60 * 4
    assert estimate.output == 3 * 16 * 100 * 60 and estimate.gate_map == 8 * 100 * 60 * 4
    assert estimate_memory(generator, 100, 60, tile=32).tile > estimate.tile
    assert (
        estimate_memory(generator, 100, 60, tile=0).tile > estimate_memory(generator, 100, 60, tile=32).tile
    )
    assert estimate.peak == max(estimate.lr_stage, estimate.hr_stage + estimate.output) + estimate.tile


@pytest.mark.parametrize("layer", ["image_branch.head", "image_out"], ids=["first_conv", "last_conv"])
def test_nan_weights_end_the_probes_at_once(layer: str) -> None:
    """NaN weights make every gradient NaN, which once read as 'reached everywhere' grew the probes to GiBs."""
    generator = _tiny()
    with torch.no_grad():
        generator.get_submodule(layer).weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput, match="NaN/Inf"):
        upscale_tiled(generator, torch.rand(1, 3, 16, 16), tile=8)


def test_probes_grow_as_strips_and_stop_at_their_budget() -> None:
    torch.manual_seed(0)
    deep = nn.Sequential(*(nn.Conv2d(2, 2, 3, padding=1) for _ in range(40)))
    assert receptive_radius(deep, [torch.empty(1, 2, 1, 1)], CPU) == 40  # past the first 17-pixel probe

    def gated(x: Tensor) -> Tensor:  # an SE-like global gate: every output pixel reads the whole input
        return x * x.mean(dim=(2, 3), keepdim=True)

    with pytest.raises(UnboundedReach, match="global op"):
        receptive_radius(gated, [torch.empty(1, 2, 1, 1)], CPU, budget=2**20)


class _GlobalToy(nn.Module):
    """A x2 generator with a global gate and no stages: no tile of it is exact, so it runs whole."""

    scale, in_channels = 2, 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, lr: Tensor) -> Tensor:
        features = self.conv(lr)
        return nn.functional.pixel_shuffle(features * features.mean(dim=(2, 3), keepdim=True).sigmoid(), 2)


def test_a_generator_whose_reach_is_unbounded_runs_whole() -> None:
    toy = _GlobalToy().eval()
    plan = plan_tiling(toy, tile=4)
    assert plan.mode == "whole" and plan.note is not None and "global op" in plan.note
    lr = torch.rand(1, 3, 13, 10)
    with torch.no_grad():
        expected = toy(lr)
    assert torch.equal(super_resolve(toy, lr, tile=4), expected)
