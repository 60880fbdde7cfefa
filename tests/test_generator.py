"""The DGGGAN generator: sizes, shapes, branch wiring, ablations by module type, init, global skip, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dgggan_pl.models.blocks import EnhancedMultiScaleResidualBlock, SqueezeExcitation
from dgggan_pl.models.generator import DGGGANGenerator, GeneratorOutput, SRBranch, bicubic_upsample
from dgggan_pl.models.gradient import GradientMagnitude

# A narrow generator for forward passes: the full width costs too much CPU for a fast test.
TINY: dict[str, Any] = {"channels": 16, "num_blocks": 3, "injection_blocks": (1, 3), "se_reduction": 4}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 14_814_742),  # 14.81M (paper 14.6M; docs/models.md)
        ({"use_se": False}, 14_803_142),
        ({"use_gradient_branch": False}, 7_370_475),
        ({"channels": 32}, 3_708_174),  # dgggan_lite
    ],
)
def test_parameter_counts(kwargs: dict[str, Any], expected: int) -> None:
    with torch.device("meta"):  # same module tree, no memory or init cost
        generator = DGGGANGenerator(**kwargs)
    assert _params(generator) == expected


@pytest.mark.parametrize(("h", "w"), [(17, 23), (1, 1), (6, 4)])
def test_odd_lr_sizes_give_x4_outputs(h: int, w: int) -> None:
    generator = DGGGANGenerator(**TINY).eval()
    with torch.no_grad():
        out = generator(torch.rand(2, 3, h, w))
    assert isinstance(out, GeneratorOutput)
    assert out.sr.shape == out.grad_map.shape == (2, 3, 4 * h, 4 * w)


def test_full_width_forward_on_a_tiny_input() -> None:
    generator = DGGGANGenerator().eval()
    with torch.no_grad():
        out = generator(torch.rand(1, 3, 5, 7))
    assert out.sr.shape == out.grad_map.shape == (1, 3, 20, 28)
    assert torch.isfinite(out.sr).all() and torch.isfinite(out.grad_map).all()


def test_no_gradient_branch_builds_no_branch_modules() -> None:
    generator = DGGGANGenerator(**TINY, use_gradient_branch=False)
    modules = list(generator.modules())
    assert sum(isinstance(m, SRBranch) for m in modules) == 1
    assert not any(isinstance(m, GradientMagnitude) for m in modules)
    assert sum(isinstance(m, EnhancedMultiScaleResidualBlock) for m in modules) == TINY["num_blocks"]
    out = generator(torch.rand(1, 3, 4, 5))
    assert out.grad_map is None and out.sr.shape == (1, 3, 16, 20)
    assert generator.use_gradient_branch is False and generator.scale == 4


def test_no_se_builds_no_se_modules() -> None:
    with_se = DGGGANGenerator(**TINY)
    without_se = DGGGANGenerator(**TINY, use_se=False)
    assert sum(isinstance(m, SqueezeExcitation) for m in with_se.modules()) == 2 * TINY["num_blocks"]
    assert not any(isinstance(m, SqueezeExcitation) for m in without_se.modules())


def test_injection_feeds_image_features_into_the_gradient_branch() -> None:
    """Same weights (injection adds no parameters); only the taps differ, so only their effect differs."""
    torch.manual_seed(0)
    injected = DGGGANGenerator(**TINY).eval()
    isolated = DGGGANGenerator(**{**TINY, "injection_blocks": ()}).eval()
    isolated.load_state_dict(injected.state_dict())
    lr = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        a, b = injected(lr), isolated(lr)
    assert not torch.allclose(a.grad_map, b.grad_map)
    # Without injection the gradient map depends on the image only through G(LR): perturbing the image
    # branch's weights must leave it unchanged.
    with torch.no_grad():
        isolated.image_branch.blocks[0].fuse.bias.add_(1.0)
        torch.testing.assert_close(isolated(lr).grad_map, b.grad_map)


def test_both_branches_receive_gradients() -> None:
    generator = DGGGANGenerator(**TINY)
    out = generator(torch.rand(1, 3, 4, 4))
    (out.sr.mean() + out.grad_map.mean()).backward()
    for branch in (generator.image_branch, generator.gradient_branch):
        assert branch.head.weight.grad is not None and branch.head.weight.grad.abs().sum() > 0


def test_init_is_deterministic_given_a_seed() -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return DGGGANGenerator(**TINY).state_dict()

    first, again, other = build(7), build(7), build(8)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["image_branch.head.weight"], other["image_branch.head.weight"])


def _convs(generator: DGGGANGenerator) -> tuple[list[nn.Conv2d], list[nn.Conv2d]]:
    """(convs inside the EMSRBs, their SE included; every other conv)."""
    inside = {
        id(m)
        for block in generator.modules()
        if isinstance(block, EnhancedMultiScaleResidualBlock)
        for m in block.modules()
    }
    convs = [m for m in generator.modules() if isinstance(m, nn.Conv2d)]
    return [c for c in convs if id(c) in inside], [c for c in convs if id(c) not in inside]


def _normalised_std(conv: nn.Conv2d) -> float:
    """Weight std x sqrt(fan_in): sqrt(2) x init_scale for Kaiming-normal, 1/sqrt(3) for PyTorch's default."""
    fan_in = conv.weight[0].numel()
    return conv.weight.std().item() * fan_in**0.5


def test_init_kaiming_times_scale_inside_the_blocks_pytorch_default_elsewhere() -> None:
    torch.manual_seed(0)
    generator = DGGGANGenerator(**TINY)
    inside, outside = _convs(generator)
    # 5 convs per EMSRB + 2 in its SE, 2 branches; head, trunk, 2 tail convs + HR conv per branch, fusion, 2 outs
    assert len(inside) == 2 * TINY["num_blocks"] * 7 and len(outside) == 2 * 5 + 3
    reference = nn.Conv2d(16, 16, 3)  # a fresh conv: PyTorch's default (Kaiming-uniform, a = sqrt(5))
    default_std = _normalised_std(reference)
    assert default_std == pytest.approx(3**-0.5, rel=0.05)
    for conv in inside:
        assert _normalised_std(conv) == pytest.approx(0.1 * 2**0.5, rel=0.3)
        assert torch.count_nonzero(conv.bias) == 0
    for conv in outside:
        assert _normalised_std(conv) == pytest.approx(default_std, rel=0.3)
        assert torch.count_nonzero(conv.bias) == conv.bias.numel()  # PyTorch's uniform bias


def test_init_scale_touches_only_the_blocks() -> None:
    torch.manual_seed(0)
    small = DGGGANGenerator(**TINY, init_scale=0.1)
    torch.manual_seed(0)
    unit = DGGGANGenerator(**TINY, init_scale=1.0)
    for name, param in small.named_parameters():
        other = unit.get_parameter(name)
        if ".blocks." in name and name.endswith("weight"):
            torch.testing.assert_close(param, 0.1 * other)
        else:
            torch.testing.assert_close(param, other)


def test_init_output_carries_the_input_and_bicubic_skip_starts_near_bicubic() -> None:
    """At init the network's own output is no longer ~1e-6 (x0.1 on every conv made it so): it depends on
    the input; with `global_skip: bicubic` the SR image is bicubic(LR) plus that small residual."""
    torch.manual_seed(0)
    plain = DGGGANGenerator(**TINY).eval()
    skip = DGGGANGenerator(**TINY, global_skip="bicubic").eval()
    skip.load_state_dict(plain.state_dict())  # the skip adds no parameters
    lr, other = torch.rand(2, 1, 3, 12, 12)
    with torch.no_grad():
        residual, residual_other, sr = plain(lr).sr, plain(other).sr, skip(lr).sr
    bicubic = bicubic_upsample(lr, 4)
    assert residual.abs().mean() > 1e-2 and (residual - residual_other).abs().mean() > 1e-3
    torch.testing.assert_close(sr, bicubic + residual)
    # closer to bicubic than bicubic is to its own mean (the residual is mostly a small offset: ~0.07 here)
    assert (sr - bicubic).abs().mean() < 0.5 * (bicubic - bicubic.mean()).abs().mean()
    assert torch.corrcoef(torch.stack([sr.flatten(), bicubic.flatten()]))[0, 1] > 0.95


def test_global_skip_is_bicubic_and_keeps_the_gradient_map() -> None:
    torch.manual_seed(0)
    generator = DGGGANGenerator(**TINY, global_skip="bicubic").eval()
    lr = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        out = generator(lr)
        generator.global_skip = "none"
        plain = generator(lr)
    torch.testing.assert_close(
        out.grad_map, plain.grad_map, rtol=0, atol=0
    )  # the gradient branch is unchanged
    expected = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)  # Keys a = -0.75
    torch.testing.assert_close(out.sr - plain.sr, expected)


def test_rejects_unknown_global_skip() -> None:
    with pytest.raises(ValueError, match="model.generator.global_skip"):
        DGGGANGenerator(**TINY, global_skip="bilinear")


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 8, 8), (1, 4, 8, 8), (1, 3, 8, 8, 1)])
def test_rejects_lr_of_wrong_shape(shape: tuple[int, ...]) -> None:
    generator = DGGGANGenerator(**TINY)
    with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
        generator(torch.rand(shape))


def test_rejects_integer_lr() -> None:
    with pytest.raises(ValueError, match="float"):
        DGGGANGenerator(**TINY)(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_rejects_injection_outside_the_blocks() -> None:
    with pytest.raises(ValueError, match="injection_blocks"):
        DGGGANGenerator(**{**TINY, "injection_blocks": (0, 4)})
