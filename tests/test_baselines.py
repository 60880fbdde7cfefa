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


def _as_spandrel_esrgan(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """Our RRDBNet's tensors under the names of ESRGAN's released (old-layout) files, which spandrel reads."""
    tail = {"tail.body.1": "model.3", "tail.body.4": "model.6", "tail.body.6": "model.8", "out": "model.10"}
    renamed = {}
    for key, value in state.items():
        module, kind = key.rsplit(".", 1)
        parts = module.split(".")
        if module == "head":
            new = "model.0"
        elif module == "trunk":
            new = f"model.1.sub.{num_blocks}"
        elif parts[0] == "blocks":  # blocks.<b>.body.<d>.convs.<i> | blocks.<b>.body.<d>.last
            conv = int(parts[5]) + 1 if parts[4] == "convs" else 5
            new = f"model.1.sub.{parts[1]}.RDB{int(parts[3]) + 1}.conv{conv}.0"
        else:
            new = tail[module]
        renamed[f"{new}.{kind}"] = value
    return renamed


def test_rrdbnet_is_esrgan_as_spandrel_builds_it(tmp_path) -> None:
    """Our RRDBNet's weights, renamed, run in spandrel's ESRGAN give the same image: the same network."""
    pytest.importorskip("spandrel", reason="the optional extra `peers` (installed by `make install`)")
    from dgggan_pl.peers import load_peer

    torch.manual_seed(0)
    ours = RRDBNet(channels=8, num_blocks=2).eval()
    path = tmp_path / "ours_as_esrgan.pth"
    torch.save(_as_spandrel_esrgan(ours.state_dict(), num_blocks=2), path)
    peer, config = load_peer(path)
    assert config["spandrel"] == "ESRGAN" and config["tags"] == ["8nf", "2nb"]
    lr = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        expected = ours(lr)
        torch.testing.assert_close(peer.model(lr), expected, rtol=0, atol=1e-6)  # the network spandrel built
    torch.testing.assert_close(peer(lr).sr, expected.clamp(0, 1), rtol=0, atol=1e-6)  # the row's output
