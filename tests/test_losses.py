"""The loss modules: exact values on hand-made inputs, the gradient penalty, the frozen VGG19."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from dgggan_pl.losses import (
    GradientPenalty,
    PerceptualLoss,
    PerceptualWeightsMissingError,
    WassersteinCriticLoss,
    WassersteinGeneratorLoss,
    vgg19_weights_path,
)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w for every sample, so the penalty is known in closed form."""

    def __init__(self, shape: tuple[int, ...], norm: float) -> None:
        super().__init__()
        weight = torch.randn(shape)
        self.weight = nn.Parameter(weight / weight.norm() * norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


def test_generator_adversarial_loss_is_minus_mean_score() -> None:
    assert WassersteinGeneratorLoss()(torch.tensor([[1.0], [3.0]])).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("norm", [0.5, 1.0, 3.0])
def test_gradient_penalty_closed_form(norm: float) -> None:
    critic = LinearCritic((3, 4, 4), norm)
    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    penalty = GradientPenalty(weight=10.0)(critic, real, fake)
    assert penalty.item() == pytest.approx(10.0 * (norm - 1.0) ** 2, rel=1e-5, abs=1e-6)


def test_gradient_penalty_trains_the_critic_and_stays_float32_under_bf16_autocast() -> None:
    critic = LinearCritic((3, 4, 4), 2.0)
    real, fake = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = GradientPenalty(weight=10.0)(critic, real, fake)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(10.0, rel=1e-5)  # (2 - 1)^2 * 10 exactly, no bf16 rounding
    penalty.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_gradient_penalty_interpolation_follows_the_given_generator() -> None:
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Tanh())  # non-linear: depends on x_hat
    real, fake = torch.rand(3, 3, 2, 2), torch.rand(3, 3, 2, 2)
    penalty = GradientPenalty()
    first = penalty(critic, real, fake, torch.Generator().manual_seed(1))
    again = penalty(critic, real, fake, torch.Generator().manual_seed(1))
    other = penalty(critic, real, fake, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_critic_loss_is_fake_minus_real_plus_penalty() -> None:
    critic = LinearCritic((3, 4, 4), 1.0)  # unit gradient norm: zero penalty
    real, fake = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4)
    loss, wdist, penalty = WassersteinCriticLoss(gp_weight=10.0)(critic, real, fake)
    expected_wdist = critic(real).mean() - critic(fake).mean()
    assert penalty.item() == pytest.approx(0.0, abs=1e-6)
    assert wdist.item() == pytest.approx(expected_wdist.item(), rel=1e-5)
    assert loss.item() == pytest.approx(-expected_wdist.item(), rel=1e-5, abs=1e-6)


def test_perceptual_loss_is_frozen_in_eval_mode_and_passes_gradients_to_sr() -> None:
    loss_fn = PerceptualLoss(weights="random")
    loss_fn.train()
    assert not loss_fn.training and not loss_fn.features.training
    assert not any(p.requires_grad for p in loss_fn.parameters())
    assert isinstance(loss_fn.features[-1], nn.Conv2d)  # conv5_4, before its ReLU
    assert loss_fn.features[-1].out_channels == 512
    sr = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = loss_fn(sr, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert loss.item() > 0 and sr.grad is not None and sr.grad.abs().sum() > 0
    assert loss_fn(sr.detach(), sr.detach()).item() == 0.0


def test_missing_vgg_weights_offline_stop_with_the_file_to_provide(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    expected = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert vgg19_weights_path() == expected
    with pytest.raises(PerceptualWeightsMissingError) as info:
        PerceptualLoss(weights="imagenet")
    message = str(info.value)
    assert str(expected) in message and "loss.terms.percept.loss.weights=random" in message


def test_unknown_perceptual_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="loss.terms.percept.loss.weights"):
        PerceptualLoss(weights="imagnet")  # type: ignore[arg-type]
