"""ESRGAN's RRDBNet generator (Wang et al., ECCVW 2018), written from the paper.

`dgggan_pl.complexity` and `benchmarks/bench_inference.py` compare DGGGAN against it, and `model=rrdbnet`
(conf/model/rrdbnet.yaml) trains it with DGGGAN's critics and objective: its forward returns the SR image alone,
which the training contract (`dgggan_pl.models.contract`) reads as an output without a gradient map.
Defaults are the published x4 model: 23 RRDBs, 64 features, growth 32 (16,697,987 parameters).
It is ESRGAN's network exactly: its weights, renamed to the released layout, give the same output in spandrel's
ESRGAN (tests/test_baselines.py). Released ESRGAN weights are loaded through spandrel (`dgggan_pl.peers`); this
module stays because SPSR's generator is built from its RRDB and Table 5 must not need the optional extra.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgggan_pl.models.blocks import UpsampleTail, conv3x3, scaled_kaiming_init_

RESIDUAL_SCALE = 0.2  # ESRGAN §3.2: residual scaling of every dense block and RRDB
INIT_SCALE = 0.1  # ESRGAN §3.2: Kaiming init scaled by 0.1


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs (growth `growth`), LReLU on the first four, scaled residual."""

    def __init__(self, channels: int, growth: int, negative_slope: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels + i * growth, growth) for i in range(4))
        self.last = conv3x3(channels + 4 * growth, channels)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return x + RESIDUAL_SCALE * self.last(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled outer residual."""

    def __init__(self, channels: int, growth: int, negative_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(*(ResidualDenseBlock(channels, growth, negative_slope) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + RESIDUAL_SCALE * self.body(x)


class RRDBNet(nn.Module):
    """`(B, 3, h, w)` -> `(B, 3, scale*h, scale*w)`: head, RRDB trunk with long skip, nearest-x2 tail."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        num_blocks: int = 23,
        growth: int = 32,
        scale: int = 4,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.head = conv3x3(in_channels, channels)
        self.blocks = nn.Sequential(*(RRDB(channels, growth, negative_slope) for _ in range(num_blocks)))
        self.trunk = conv3x3(channels, channels)
        self.tail = UpsampleTail(channels, scale, negative_slope)
        self.out = conv3x3(channels, in_channels)
        scaled_kaiming_init_(self, INIT_SCALE)

    def forward(self, lr: Tensor) -> Tensor:
        head = self.head(lr)
        return self.out(self.tail(self.trunk(self.blocks(head)) + head))
