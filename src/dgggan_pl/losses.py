"""The loss modules of DGGGAN's objective (paper eq. 7 and 10; docs/design.md#objective) that torch lacks.

`conf/loss/` names each term's module, weight and input (`dgggan_pl.objective`); the L1 terms use
`torch.nn.L1Loss` directly. These modules compute unweighted terms, so that every term is logged as is.
Images are `(B, 3, H, W)` in [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

log = logging.getLogger(__name__)

PerceptualWeights = Literal["imagenet", "random"]
_VGG19_CONFIG = "E"  # torchvision's layer table for VGG19
VGG19_CONV5_4_BEFORE_RELU = 35  # torchvision vgg19().features[:35] ends at conv5_4, before its ReLU
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (the VGG19 weights' own)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualWeightsMissingError(RuntimeError):
    """The ImageNet VGG19 weights are neither cached nor downloadable (the message says where to put them)."""


def vgg19_weights_path() -> Path:
    """Where torchvision caches `VGG19_Weights.IMAGENET1K_V1`: `$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name


def _load_vgg19_features(weights: PerceptualWeights) -> nn.Sequential:
    """torchvision's VGG19 `features` (the classifier's 120M parameters are never built)."""
    features = make_layers(cfgs[_VGG19_CONFIG])
    if weights == "random":
        log.warning(
            "loss.terms.percept.loss.weights=random: the perceptual loss uses an UNTRAINED VGG19 (tests only; "
            "its values mean nothing)"
        )
        return features
    if weights != "imagenet":
        raise ValueError(f"loss.terms.percept.loss.weights must be 'imagenet' or 'random', got {weights!r}")
    path = vgg19_weights_path()
    try:
        state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)  # cache first, else download
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a truncated file a RuntimeError
        raise PerceptualWeightsMissingError(
            f"The perceptual loss needs torchvision's ImageNet VGG19 weights at {path} ($TORCH_HOME/hub/checkpoints/"
            f"{path.name}), and they could not be loaded or downloaded ({type(error).__name__}: {error}). "
            f"Download {VGG19_Weights.IMAGENET1K_V1.url} on a machine with internet and copy it to {path}, "
            "or point TORCH_HOME at a folder holding hub/checkpoints/ with it. For tests only, "
            "loss.terms.percept.loss.weights=random uses an untrained VGG19."
        ) from error
    prefix = "features."
    features.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return features


class PerceptualLoss(nn.Module):
    """L1 between frozen VGG19 features (conv5_4 before ReLU, ImageNet-normalised input) of SR and HR.

    The network is frozen and kept in eval mode whatever the parent's mode, so it never trains and never
    shows up as a trainable (DDP-synchronised) parameter.
    """

    mean: Tensor  # non-persistent buffers, declared for the type checker (Module.__getattr__ is untyped)
    std: Tensor

    def __init__(
        self, weights: PerceptualWeights = "imagenet", layer: int = VGG19_CONV5_4_BEFORE_RELU
    ) -> None:
        super().__init__()
        self.features = _load_vgg19_features(weights)[:layer].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stay in eval mode: the loss network is fixed."""
        return super().train(False)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        """`(B, 3, H, W)` x 2 in [0, 1] -> scalar L1 distance of their VGG features."""
        sr_features = self.features((sr - self.mean) / self.std)
        with torch.no_grad():
            hr_features = self.features((hr - self.mean) / self.std)
        return F.l1_loss(sr_features, hr_features)


class WassersteinGeneratorLoss(nn.Module):
    """L_adv = -mean D(fake): the generator raises the critic's score of its output."""

    def forward(self, fake_scores: Tensor) -> Tensor:
        return -fake_scores.mean()


class GradientPenalty(nn.Module):
    """WGAN-GP penalty lambda * mean((||grad_x D(x_hat)||_2 - 1)^2) (Gulrajani et al. 2017; docs/design.md#objective).

    x_hat is a per-sample random interpolation of real and (detached) fake. Computed in float32 with
    autocast off, so bf16 training keeps an exact penalty; the graph is kept (create_graph) so the
    penalty trains the critic.
    """

    def __init__(self, weight: float = 10.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(
        self, critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """`critic`: `(B, C, P, P)` -> `(B, 1)`; `real`, `fake`: `(B, C, P, P)` -> weighted scalar penalty.

        `generator` draws the interpolation weights (the training module seeds one per step for exact resume).
        """
        real, fake = real.detach().float(), fake.detach().float()
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        with torch.autocast(device_type=real.device.type, enabled=False):
            scores = critic(x_hat)
            (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return self.weight * (norms - 1).square().mean()


class WassersteinCriticLoss(nn.Module):
    """One critic's WGAN-GP loss: mean D(fake) - mean D(real) + penalty (eq. 10).

    Returns `(loss, wasserstein_estimate, penalty)`; the estimate mean D(real) - mean D(fake) is what to
    watch in the logs (it should shrink as the generator improves).
    """

    def __init__(self, gp_weight: float = 10.0) -> None:
        super().__init__()
        self.gradient_penalty = GradientPenalty(gp_weight)

    def forward(
        self, critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`real`, `fake`: `(B, C, P, P)` (fake detached by the caller) -> (loss, W estimate, penalty)."""
        wdist = critic(real).mean() - critic(fake).mean()
        penalty = self.gradient_penalty(critic, real, fake, generator)
        return penalty - wdist, wdist.detach(), penalty.detach()
