"""LPIPS modes: pretrained (from TORCH_HOME, or a clear error), random (test-only key), disabled."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from dgggan_pl.metrics.perceptual import (
    LPIPSScore,
    PretrainedWeightsMissing,
    alexnet_checkpoint_path,
    build_lpips,
    lpips_key,
)
from dgggan_pl.metrics.suite import BenchmarkMetrics


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME where every download fails at once (no network use in tests)."""

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_missing_backbone_names_the_file_and_folder(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert alexnet_checkpoint_path() == expected
    with pytest.raises(PretrainedWeightsMissing) as info:
        build_lpips("pretrained")  # offline (the default): no download is tried
    message = str(info.value)
    assert (
        str(expected) in message
        and "metrics.lpips=disabled" in message
        and "metrics.download=true" in message
    )
    assert "\n" not in message and "failed" not in message
    with pytest.raises(PretrainedWeightsMissing) as info:
        build_lpips("pretrained", download=True)
    assert "downloading it failed (" in str(info.value) and "no network in tests" in str(info.value)
    assert info.value.__cause__ is None  # one line, not a chained traceback


def test_pretrained_backbone_is_read_from_torch_home(torch_home: Path) -> None:
    """A stand-in AlexNet checkpoint (stride-0 tensors: a tiny file) at the cache path is what gets loaded."""
    target = alexnet_checkpoint_path()
    target.parent.mkdir(parents=True)
    state = {
        k: torch.full((1,), 0.01).expand_as(v) for k, v in torchvision.models.alexnet().state_dict().items()
    }
    torch.save(state, target)
    net = build_lpips("pretrained")
    conv = net.net.slice1[0].weight
    assert torch.all(conv == 0.01), "the backbone must come from $TORCH_HOME/hub/checkpoints"
    assert not any(p.requires_grad for p in net.parameters()), "lpips 0.1.4 leaves lin layers trainable"


def test_random_backbone_is_labelled_and_frozen() -> None:
    with pytest.warns(UserWarning, match="RANDOM AlexNet"):
        net = build_lpips("random")
    assert not any(p.requires_grad for p in net.parameters())
    assert lpips_key("random") == "lpips_random_backbone" and lpips_key("pretrained") == "lpips"
    metric = LPIPSScore(net)
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 64, 64, generator=gen)
    metric.update(hr, hr, ["a", "b"])
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-7)
    metric.update(torch.rand(2, 3, 64, 64, generator=gen), hr, ["c", "d"])
    assert metric.compute().item() > 0
    assert list(metric.state_dict()) == [] and not list(metric.parameters()), (
        "network kept out of checkpoints"
    )


def test_suite_modes(torch_home: Path) -> None:
    with pytest.raises(PretrainedWeightsMissing, match="alexnet-owt-7be5be79.pth"):
        BenchmarkMetrics(4, ["lpips"], lpips="pretrained")
    assert "lpips" not in BenchmarkMetrics(4, ["lpips"], lpips="disabled").scores
    with pytest.raises(ValueError, match="metrics.lpips"):
        BenchmarkMetrics(4, ["lpips"], lpips="vgg")
