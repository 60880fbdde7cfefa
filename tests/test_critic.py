"""The VGG-style WGAN-GP critic (docs/design.md#critics): patch sizes, size, no BN, per-sample scores, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgggan_pl.models.critic import VGGCritic

NARROW = (8, 8, 16, 16, 16, 16)  # same depth, cheap forward passes


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_at_192() -> None:
    with torch.device("meta"):
        critic = VGGCritic(patch_size=192)
    assert _params(critic) == 20_692_745  # docs/design.md#critics: six pairs, no norm, 3x3x512 flatten


@pytest.mark.parametrize(("patch_size", "final"), [(192, 3), (128, 2), (200, 3)])
def test_flatten_size_follows_patch_size(patch_size: int, final: int) -> None:
    with torch.device("meta"):
        critic = VGGCritic(patch_size=patch_size)
    assert critic.classifier[1].in_features == 512 * final * final


@pytest.mark.parametrize("patch_size", [128, 192])
def test_full_width_output_shape(patch_size: int) -> None:
    critic = VGGCritic(patch_size=patch_size).eval()
    with torch.no_grad():
        assert critic(torch.rand(1, 3, patch_size, patch_size)).shape == (1, 1)


def test_no_batch_norm_and_no_sigmoid() -> None:
    critic = VGGCritic(patch_size=64, widths=NARROW)
    kinds = {type(m) for m in critic.modules()}
    assert not kinds & {nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.Sigmoid}


def test_scores_are_per_sample() -> None:
    """The gradient penalty needs each score to depend on its own sample only."""
    critic = VGGCritic(patch_size=64, widths=NARROW)
    batch = torch.rand(3, 3, 64, 64)
    together = critic(batch)
    alone = torch.cat([critic(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)
    assert together.shape == (3, 1)


def test_gradient_critic_takes_gradient_maps() -> None:
    critic = VGGCritic(in_channels=3, patch_size=64, widths=NARROW)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    assert grad.shape == x.shape  # double backward works (WGAN-GP)


def test_rejects_patch_too_small() -> None:
    with pytest.raises(ValueError, match="patch_size=32"):
        VGGCritic(patch_size=32)


def test_rejects_input_of_other_size() -> None:
    critic = VGGCritic(patch_size=64, widths=NARROW)
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 96, 96\)"):
        critic(torch.rand(1, 3, 96, 96))
