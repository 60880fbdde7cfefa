"""Building blocks of the DGGGAN generator: SE and the enhanced multi-scale residual block (docs/design.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgggan_pl.models.gradient import autocast_on


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Size-preserving 3x3 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def conv5x5(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Size-preserving 5x5 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2)


@torch.no_grad()
def scaled_kaiming_init_(module: nn.Module, scale: float) -> None:
    """Kaiming-normal (fan_in) weights times `scale`, zero biases, for every conv and linear layer.

    ESRGAN/SPSR use scale 0.1 for generators so that deep residual stacks start close to identity.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in")
            layer.weight.mul_(scale)
            if layer.bias is not None:
                layer.bias.zero_()


def outside_autocast(layer: nn.Module, x: Tensor) -> Tensor:
    """`layer(x)` in the layer's own weight dtype with autocast off (as is, when autocast is not on).

    For the generator's output convolutions: under bf16 autocast their output (the SR image, the SR gradient
    map) would be rounded to bf16 steps of 2^-9..2^-8, coarser than 8-bit pixels near 1, and every
    gradient map of it (eq. 7's mu term, the gradient critic) would see that staircase instead of the image.
    """
    if not autocast_on(x):
        return layer(x)
    dtype = next(layer.parameters()).dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.to(dtype))


class GlobalAveragePool(nn.Module):
    """`(B, C, H, W)` -> `(B, C, 1, 1)`: the mean over H and W.

    The same values as `nn.AdaptiveAvgPool2d(1)`, but a plain reduction, whose CUDA backward is deterministic
    (adaptive pooling's is not, so `trainer.deterministic=true` failed at the first backward).
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool, 1x1 C -> C/r, ReLU, 1x1 C/r -> C, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(
                f"se_reduction={reduction} leaves no hidden channel for channels={channels}; "
                "set model.generator.se_reduction <= channels"
            )
        self.gate = nn.Sequential(
            GlobalAveragePool(),  # index 0 kept: the convs stay gate.1 / gate.3 in checkpoints
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` -> `(B, C, H, W)`, each channel scaled by its gate in (0, 1)."""
        return x * self.channel_gate(x)

    def channel_gate(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` -> `(B, C, 1, 1)` gates, computed on this module's device and returned on `x`'s.

        The pooling is global (the whole map), so tiled inference computes it on the assembled map; `x` may
        live on another device (CPU storage for a GPU model) and only visits this one for the gate.
        """
        device = next(self.gate.parameters()).device
        return self.gate(x.to(device)).to(x.device)


class EnhancedMultiScaleResidualBlock(nn.Module):
    """MSRN's two-stage 3x3/5x5 block, fusing all four branch outputs (docs/design.md, "msrb4").

    stage 1: 3x3 and 5x5 (C -> C) on x; stage 2: 3x3 and 5x5 (2C -> 2C) on concat(stage 1);
    1x1 fuse of concat(all four) = 6C -> C without activation; optional SE; residual add of x.
    LeakyReLU after every 3x3/5x5 conv. Shape `(B, C, H, W)` -> `(B, C, H, W)`.

    Two stages, so that tiled inference can drive the same code: `local` (the convolutions, receptive
    radius 4 pixels) and `finish` (SE, whose gate pools the WHOLE map, and the residual add).
    `forward(x) = finish(x, local(x))`.
    """

    def __init__(self, channels: int, use_se: bool, se_reduction: int, negative_slope: float) -> None:
        super().__init__()
        self.stage1_3x3 = conv3x3(channels, channels)
        self.stage1_5x5 = conv5x5(channels, channels)
        self.stage2_3x3 = conv3x3(2 * channels, 2 * channels)
        self.stage2_5x5 = conv5x5(2 * channels, 2 * channels)
        self.fuse = nn.Conv2d(6 * channels, channels, kernel_size=1)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.se = SqueezeExcitation(channels, se_reduction) if use_se else None

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` -> `(B, C, H, W)`."""
        return self.finish(x, self.local(x))

    def local(self, x: Tensor) -> Tensor:
        """The convolutions and the 1x1 fuse, `(B, C, H, W)` -> `(B, C, H, W)`: purely local (radius 4)."""
        s1 = torch.cat([self.act(self.stage1_3x3(x)), self.act(self.stage1_5x5(x))], dim=1)
        s2 = torch.cat([self.act(self.stage2_3x3(s1)), self.act(self.stage2_5x5(s1))], dim=1)
        return self.fuse(torch.cat([s1, s2], dim=1))

    def finish(self, x: Tensor, local: Tensor, *, inplace: bool = False) -> Tensor:
        """`x + SE(local)` (or `x + local` without SE); the SE gate pools the whole map.

        `inplace=True` writes the result into `local`'s memory (same values, bit for bit: x + local * gate),
        which saves one full map in tiled inference; never with autograd. `x` and `local` may be on another
        device than the weights (the gate alone is computed on the weights' device).
        """
        if self.se is None:
            return local.add_(x) if inplace else x + local
        gate = self.se.channel_gate(local)
        return local.mul_(gate).add_(x) if inplace else x + local * gate


class UpsampleTail(nn.Module):
    """x`scale` upsampling: log2(scale) stages of (nearest x2, 3x3 conv, LReLU), then 3x3 HR conv + LReLU."""

    def __init__(self, channels: int, scale: int, negative_slope: float) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"model.generator.scale must be a power of two >= 2, got {scale}")
        layers: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv3x3(channels, channels),
                nn.LeakyReLU(negative_slope, inplace=True),
            ]
        layers += [conv3x3(channels, channels), nn.LeakyReLU(negative_slope, inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, h, w)` -> `(B, C, scale*h, scale*w)` HR features."""
        return self.body(x)
