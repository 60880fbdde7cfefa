"""SPSR's generator (Ma et al., CVPR 2020), written from the paper's description for complexity comparisons.

Not used in training. An RRDBNet image branch; a gradient branch on G(LR) that, every `tap_every` image
blocks, concatenates an image-feature tap and passes it through an RRDB at 2C plus a 3x3 conv 2C -> C;
both branches upsampled to HR and fused there by another RRDB at 2C. 24,796,230 parameters at the defaults.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgggan_pl.models.baselines.rrdbnet import INIT_SCALE, RRDB
from dgggan_pl.models.blocks import UpsampleTail, conv3x3, scaled_kaiming_init_
from dgggan_pl.models.contract import GeneratorOutput
from dgggan_pl.models.gradient import GradientMagnitude


def _hr_tail(channels: int, scale: int, negative_slope: float) -> nn.Sequential:
    """SPSR's HR tail: the ESRGAN upsampler + LReLU HR conv, then one more 3x3 conv without activation."""
    return nn.Sequential(UpsampleTail(channels, scale, negative_slope), conv3x3(channels, channels))


class SPSRGenerator(nn.Module):
    """`(B, 3, h, w)` -> `GeneratorOutput(sr, grad_map)`, both `(B, 3, scale*h, scale*w)`."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        num_blocks: int = 23,
        growth: int = 32,
        tap_every: int = 5,
        num_taps: int = 4,
        scale: int = 4,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if tap_every * num_taps > num_blocks:
            raise ValueError(f"tap_every * num_taps = {tap_every * num_taps} exceeds num_blocks {num_blocks}")
        self.tap_every = tap_every
        wide = 2 * channels
        self.image_head = conv3x3(in_channels, channels)
        self.image_blocks = nn.ModuleList(RRDB(channels, growth, negative_slope) for _ in range(num_blocks))
        self.image_trunk = conv3x3(channels, channels)
        self.image_tail = _hr_tail(channels, scale, negative_slope)

        self.gradient = GradientMagnitude()
        self.grad_head = conv3x3(in_channels, channels)
        self.grad_stages = nn.ModuleList(
            nn.Sequential(RRDB(wide, growth, negative_slope), conv3x3(wide, channels))
            for _ in range(num_taps)
        )
        self.grad_trunk = conv3x3(channels, channels)
        self.grad_tail = _hr_tail(channels, scale, negative_slope)
        self.grad_out = nn.Conv2d(channels, in_channels, kernel_size=1)

        self.fusion = nn.Sequential(
            RRDB(wide, growth, negative_slope),
            conv3x3(wide, channels),
            conv3x3(channels, channels),
            nn.LeakyReLU(negative_slope, inplace=True),
            conv3x3(channels, in_channels),
        )
        scaled_kaiming_init_(self, INIT_SCALE)

    def forward(self, lr: Tensor) -> GeneratorOutput:
        image_head = self.image_head(lr)
        grad_head = self.grad_head(self.gradient(lr))
        image_feat, grad_feat = image_head, grad_head
        stages = iter(self.grad_stages)
        for index, block in enumerate(self.image_blocks, start=1):
            image_feat = block(image_feat)
            if index % self.tap_every == 0:
                stage = next(stages, None)
                if stage is not None:
                    grad_feat = stage(torch.cat([grad_feat, image_feat], dim=1))
        image_hr = self.image_tail(self.image_trunk(image_feat) + image_head)
        grad_hr = self.grad_tail(self.grad_trunk(grad_feat) + grad_head)
        sr = self.fusion(torch.cat([grad_hr, image_hr], dim=1))
        return GeneratorOutput(sr, self.grad_out(grad_hr))
