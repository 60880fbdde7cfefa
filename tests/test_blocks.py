"""SE, the enhanced multi-scale residual block and the upsampling tail (docs/design.md#emsrb)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgggan_pl.models.blocks import (
    EnhancedMultiScaleResidualBlock,
    GlobalAveragePool,
    SqueezeExcitation,
    UpsampleTail,
    scaled_kaiming_init_,
)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_emsrb_parameter_count_at_c64() -> None:
    # 3x3 + 5x5 (C->C), 3x3 + 5x5 (2C->2C), 1x1 6C->C, SE 580 (721,924 per block, docs/design.md#emsrb).
    with_se = EnhancedMultiScaleResidualBlock(64, use_se=True, se_reduction=16, negative_slope=0.2)
    without_se = EnhancedMultiScaleResidualBlock(64, use_se=False, se_reduction=16, negative_slope=0.2)
    assert _params(with_se) == 721_924
    assert _params(without_se) == 721_924 - 580
    assert not any(isinstance(m, SqueezeExcitation) for m in without_se.modules())


def test_emsrb_fuses_all_four_branch_outputs() -> None:
    block = EnhancedMultiScaleResidualBlock(8, use_se=True, se_reduction=4, negative_slope=0.2)
    assert block.fuse.in_channels == 6 * 8 and block.fuse.kernel_size == (1, 1)
    x = torch.rand(2, 8, 5, 9)
    assert block(x).shape == x.shape


def test_emsrb_is_identity_when_fuse_is_zero() -> None:
    block = EnhancedMultiScaleResidualBlock(8, use_se=False, se_reduction=4, negative_slope=0.2)
    nn.init.zeros_(block.fuse.weight)
    nn.init.zeros_(block.fuse.bias)
    x = torch.rand(1, 8, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_se_scales_each_channel_by_a_gate_in_unit_interval() -> None:
    se = SqueezeExcitation(16, reduction=4)
    x = torch.rand(2, 16, 7, 7) + 0.1
    ratio = se(x) / x
    # One gate per (sample, channel), constant over space, strictly between 0 and 1.
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))
    assert ratio.min() > 0 and ratio.max() < 1


def test_se_rejects_reduction_larger_than_channels() -> None:
    with pytest.raises(ValueError, match="se_reduction"):
        SqueezeExcitation(8, reduction=16)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upsample_tail_scales_spatial_size(scale: int) -> None:
    tail = UpsampleTail(4, scale, negative_slope=0.2)
    assert tail(torch.rand(1, 4, 3, 5)).shape == (1, 4, 3 * scale, 5 * scale)


@pytest.mark.parametrize("scale", [1, 3, 6])
def test_upsample_tail_rejects_non_power_of_two(scale: int) -> None:
    with pytest.raises(ValueError, match="scale"):
        UpsampleTail(4, scale, negative_slope=0.2)


def test_scaled_kaiming_init_statistics() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    scaled_kaiming_init_(conv, 0.1)
    fan_in = 64 * 9
    expected_std = 0.1 * math.sqrt(2.0 / fan_in)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("use_se", [True, False])
def test_emsrb_stages_compose_to_forward_and_inplace_reuses_the_local_map(use_se: bool) -> None:
    """forward = finish(x, local(x)); the in-place finish (tiled inference) gives the same bits in `local`."""
    torch.manual_seed(0)
    block = EnhancedMultiScaleResidualBlock(8, use_se=use_se, se_reduction=4, negative_slope=0.2).eval()
    scaled_kaiming_init_(block, 1.0)
    x = torch.rand(2, 8, 9, 7)
    with torch.no_grad():
        expected = block(x)
        local = block.local(x)
        assert torch.equal(block.finish(x, local), expected)
        result = block.finish(x, local, inplace=True)
    assert torch.equal(result, expected) and result.data_ptr() == local.data_ptr()
    assert not torch.equal(x, expected)  # x itself is left alone


def test_se_gate_is_one_per_channel_and_matches_forward() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=4)
    x = torch.rand(2, 8, 5, 6)
    gate = se.channel_gate(x)
    assert gate.shape == (2, 8, 1, 1)
    torch.testing.assert_close(x * gate, se(x), rtol=0, atol=0)


def test_global_average_pool_equals_the_adaptive_pooling_it_replaces() -> None:
    """Same values as `nn.AdaptiveAvgPool2d(1)` (whose CUDA backward is not deterministic), gradients too."""
    torch.manual_seed(0)
    x = torch.rand(3, 8, 17, 23, dtype=torch.float64, requires_grad=True)
    old = nn.AdaptiveAvgPool2d(1)(x)
    new = GlobalAveragePool()(x)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-15)
    (old_grad,) = torch.autograd.grad(old.square().sum(), x)
    (new_grad,) = torch.autograd.grad(new.square().sum(), x)
    torch.testing.assert_close(new_grad, old_grad, rtol=0, atol=1e-15)
    x32 = x.detach().float()
    torch.testing.assert_close(GlobalAveragePool()(x32), nn.AdaptiveAvgPool2d(1)(x32))


def test_se_state_dict_keys_are_unchanged_and_no_model_has_adaptive_pooling(compose) -> None:
    from hydra.utils import instantiate

    assert set(SqueezeExcitation(8, reduction=4).state_dict()) == {
        "gate.1.weight",
        "gate.1.bias",
        "gate.3.weight",
        "gate.3.bias",
    }  # checkpoints written with the adaptive pooling at gate.0 still load strictly
    cfg = compose(["experiment=full", "debug=smoke"])
    networks = [instantiate(cfg.model[name]) for name in ("generator", "image_critic", "gradient_critic")]
    adaptive = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
    pools = [type(m).__name__ for net in networks for m in net.modules() if isinstance(m, adaptive)]
    assert not pools
    assert any(isinstance(m, GlobalAveragePool) for m in networks[0].modules())
