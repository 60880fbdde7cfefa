"""Reference generators for the complexity comparison: published sizes and working forward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgggan_pl.models.baselines import RRDBNet, SPSRGenerator
from dgggan_pl.models.baselines.rrdbnet import RRDB


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_rrdbnet_has_the_published_size() -> None:
    with torch.device("meta"):
        model = RRDBNet()
    assert _params(model) == 16_697_987  # ESRGAN's 16.7M (the paper's Table 5)
    assert sum(isinstance(m, RRDB) for m in model.modules()) == 23


def test_spsr_has_the_published_size() -> None:
    with torch.device("meta"):
        model = SPSRGenerator()
    assert _params(model) == 24_796_230  # SPSR's 24.8M (the paper's Table 5)
    # 23 image RRDBs, 4 gradient stages at 2C, one fusion RRDB at 2C.
    assert sum(isinstance(m, RRDB) for m in model.modules()) == 28


def test_rrdbnet_forward_shape() -> None:
    model = RRDBNet(channels=8, num_blocks=2, growth=4).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 5, 7)).shape == (2, 3, 20, 28)


def test_spsr_forward_shapes_and_taps() -> None:
    model = SPSRGenerator(channels=8, num_blocks=4, growth=4, tap_every=1, num_taps=4).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 5, 6))
    assert out.sr.shape == out.grad_map.shape == (1, 3, 20, 24)


def test_spsr_rejects_more_taps_than_blocks() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        SPSRGenerator(num_blocks=10, tap_every=5, num_taps=4)
