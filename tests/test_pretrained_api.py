"""The inference API on the model (`from_pretrained`, `save_pretrained`, `enable_tiling`, `upscale`) gives what
`python -m dgggan_pl.upscale` writes, and tiling needs only the `SRGenerator` contract, not DGGGAN's modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from dgggan_pl import DGGGANGenerator, SRModel, read_image
from dgggan_pl.models.contract import GeneratorOutput, LRFeatures, Run, SRGenerator, apply
from dgggan_pl.tiling import estimate_memory, hr_stage_radius, lr_stage_radius, upscale_tiled
from dgggan_pl.upscale import main as upscale_main
from dgggan_pl.weights import PRETRAINED_NAME, WeightsError, sidecar_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(path: Path, height: int = 11, width: int = 14) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("tile", [4, 0], ids=["tiled", "whole"])
def test_from_pretrained_and_enable_tiling_equal_the_upscale_cli(
    tiny_generator_checkpoint, tmp_path: Path, channels_last: bool, tile: int
) -> None:
    weights = tiny_generator_checkpoint(global_skip="bicubic")
    photo = _photo(tmp_path / "photo.png")
    written = tmp_path / "cli_x4.png"
    layout = "--channels-last" if channels_last else "--no-channels-last"
    args = [
        str(photo),
        str(written),
        "--weights",
        str(weights),
        "--tile",
        str(tile),
        "--device",
        "cpu",
        layout,
    ]
    assert upscale_main(args) == 0

    model = DGGGANGenerator.from_pretrained(weights)
    if tile:
        model.enable_tiling(tile)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sr = model.upscale(read_image(photo))
    assert sr.dtype == torch.uint8 and sr.shape == (3, 44, 56)
    assert torch.equal(sr, read_image(written))  # bit-equal: the same code path, the same rounding


def test_save_pretrained_round_trip(tiny_generator_checkpoint, tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match=r"use dgggan_pl\.SRModel\.from_pretrained"):  # kept, and says so
        model = DGGGANGenerator.from_pretrained(tiny_generator_checkpoint())
    folder = tmp_path / "pretrained"
    weights = model.save_pretrained(folder)
    assert weights == folder / PRETRAINED_NAME
    config = json.loads(sidecar_path(weights).read_text())["generator"]
    assert config == model.config  # the constructor's arguments, nothing else
    assert DGGGANGenerator(**{k: v for k, v in config.items() if k != "_target_"}).config == config

    for source in (folder, weights):  # the folder or its safetensors file
        loaded = DGGGANGenerator.from_pretrained(source)
        assert not loaded.training
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_tiled_upscale_equals_the_forward_on_floats(tiny_generator_checkpoint) -> None:
    model = DGGGANGenerator.from_pretrained(tiny_generator_checkpoint())
    lr = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        expected = model(lr).sr
    assert torch.equal(model.upscale(lr), expected)  # tiling off by default: the forward itself
    tiled = model.enable_tiling(8).upscale(lr)
    assert (tiled - expected).abs().max() <= 1e-5  # the tiling tests' tolerance (float rounding)
    with torch.no_grad():
        single = model(lr[:1]).sr[0]
    assert torch.equal(model.disable_tiling().upscale(lr[0]), single)  # an unbatched image


def test_bad_arguments_and_files_are_one_clear_error(tmp_path: Path) -> None:
    model = SRModel(DGGGANGenerator(channels=8, num_blocks=1, injection_blocks=(1,), se_reduction=4))
    with pytest.raises(ValueError, match="tile >= 1"):
        model.enable_tiling(0)
    with pytest.raises(ValueError, match="overlap >= 0"):
        model.enable_tiling(8, overlap=-1)
    with pytest.raises(WeightsError, match=f"{PRETRAINED_NAME}: weights file not found"):
        DGGGANGenerator.from_pretrained(tmp_path)


class _TwoStageToy(nn.Module):
    """A x2 generator that is not DGGGAN: one conv at LR, sub-pixel convolution at HR, no SE, no branches."""

    scale = 2
    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv2d(3, 5, 3, padding=1)
        self.tail = nn.Conv2d(5, 3 * self.scale**2, 3, padding=1)

    def forward(self, lr: Tensor) -> GeneratorOutput:
        return self.decode(self.encode(lr), lr)

    def encode(self, lr: Tensor, run: Run = apply, *, inplace: bool = False) -> LRFeatures:
        return LRFeatures(run(self.body, lr), None)

    def decode(self, features: LRFeatures, lr: Tensor) -> GeneratorOutput:
        return GeneratorOutput(F.pixel_shuffle(self.tail(features.image), self.scale), None)


def test_tiling_needs_only_the_contract() -> None:
    toy = _TwoStageToy().eval()
    assert isinstance(toy, SRGenerator) and isinstance(
        DGGGANGenerator(channels=8, se_reduction=4), SRGenerator
    )
    assert not isinstance(nn.Conv2d(3, 3, 1), SRGenerator)
    assert lr_stage_radius(toy) == 1 and hr_stage_radius(toy) == 1
    lr = torch.rand(1, 3, 13, 10)
    with torch.no_grad():
        expected = toy(lr).sr
    assert (upscale_tiled(toy, lr, tile=4) - expected).abs().max() <= 1e-5
    estimate = estimate_memory(toy, 13, 10, tile=4)
    assert estimate.lr_stage == (3 + 5) * 13 * 10 * 4  # the input and the one 5-channel map its encode makes
    assert estimate.gate_map == 5 * 13 * 10 * 4
