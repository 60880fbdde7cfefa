"""The model layer: `SRModel` loads our checkpoints, `save_pretrained` folders, lone `.safetensors` and peers'
weights alike, tiles any generator exactly (DGGGAN by its stages, RRDBNet by overlap), saves what it loaded, and
our files open in spandrel; inference imports neither Lightning nor Hydra, and works without spandrel."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dgggan_pl import SRModel
from dgggan_pl.data.io import quantize_uint8
from dgggan_pl.models.baselines import RRDBNet
from dgggan_pl.models.generator import DGGGANGenerator
from dgggan_pl.peers import PeerGenerator
from dgggan_pl.weights import CONFIG_TENSOR, PRETRAINED_NAME, sidecar_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RRDBNET_CONFIG = {  # conf/model/smoke/rrdbnet.yaml's sizes; the other arguments are the class defaults
    "_target_": "dgggan_pl.models.baselines.rrdbnet.RRDBNet",
    "channels": 8,
    "num_blocks": 1,
    "growth": 4,
}
TOLERANCE = 1e-5  # tiled vs untiled: float rounding only


def _checkpoint(path: Path, config: dict, generator: torch.nn.Module) -> Path:
    """A Lightning-style training checkpoint of `generator` (what `model=rrdbnet` training writes)."""
    state = {f"generator.{key}": value for key, value in generator.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"generator": config}}}, path)
    return path


@pytest.fixture
def rrdbnet_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    generator = RRDBNet(**{k: v for k, v in RRDBNET_CONFIG.items() if k != "_target_"})
    return _checkpoint(tmp_path / "rrdbnet.ckpt", RRDBNET_CONFIG, generator)


def test_rrdbnet_tiles_exactly_and_saves_every_constructor_argument(
    rrdbnet_checkpoint: Path, tmp_path: Path
) -> None:
    model = SRModel.from_pretrained(rrdbnet_checkpoint)
    assert (model.scale, model.in_channels, model.training) == (
        4,
        3,
        False,
    )  # measured: RRDBNet states neither
    lr = torch.rand(1, 3, 29, 23)
    with torch.no_grad():
        expected = model(lr).sr  # a bare tensor forward, read as GeneratorOutput(sr, None)
    assert torch.equal(model.upscale(lr), expected)
    plan = model.enable_tiling(8).tiling_plan()
    assert (
        plan.mode == "overlap" and plan.overlap > 8
    )  # no stages: whole forwards on tiles grown by its reach
    assert (model.upscale(lr) - expected).abs().max() <= TOLERANCE
    image = quantize_uint8(lr[0])
    tiled = model.upscale(image)
    whole = model.disable_tiling().upscale(image)
    assert (
        tiled.dtype == torch.uint8 and (tiled.int() - whole.int()).abs().max() <= 1
    )  # a rounding edge at most

    weights = model.save_pretrained(tmp_path / "saved")
    config = json.loads(sidecar_path(weights).read_text())["generator"]
    assert config == {
        **RRDBNET_CONFIG,
        "in_channels": 3,
        "scale": 4,
        "negative_slope": 0.2,
    }  # defaults filled in
    loaded = SRModel.from_pretrained(weights.parent)
    assert torch.equal(loaded.upscale(lr), expected)


def test_every_source_loads_the_same_way(tiny_generator_checkpoint, tmp_path: Path) -> None:
    checkpoint = tiny_generator_checkpoint(ema=True)
    model = SRModel.from_pretrained(checkpoint)
    assert model.ema and model.config == DGGGANGenerator(**_arguments(model.config)).config
    lr = torch.rand(2, 3, 11, 9)
    expected = model.upscale(lr)
    folder = tmp_path / "pretrained"
    weights = model.save_pretrained(folder)
    assert weights == folder / PRETRAINED_NAME
    sidecar_path(weights).unlink()  # a lone .safetensors: its config travels inside it
    for source in (folder, weights):
        loaded = SRModel.from_pretrained(source)
        assert loaded.ema and loaded.config == model.config and torch.equal(loaded.upscale(lr), expected)
    assert torch.equal(
        DGGGANGenerator.from_pretrained(checkpoint).upscale(lr), expected
    )  # the kept entry point

    half = SRModel.from_pretrained(checkpoint).to(torch.float64)  # .to / .half act on the generator
    assert half.upscale(lr).dtype == torch.float32 and (half.upscale(lr) - expected).abs().max() < 1e-5
    assert SRModel.from_pretrained(checkpoint).half().upscale(quantize_uint8(lr)).dtype == torch.uint8


def _arguments(config: dict | None) -> dict:
    assert config is not None
    return {key: value for key, value in config.items() if key != "_target_"}


def test_a_peer_is_served_and_saved_like_ours(tmp_path: Path) -> None:
    pytest.importorskip("spandrel", reason="the optional extra `peers` (installed by `make install`)")
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = tmp_path / "RRDB_tiny_x4.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1).state_dict(), path)
    model = SRModel.from_pretrained(path).enable_tiling(4)
    assert isinstance(model.generator, PeerGenerator) and model.config is None
    assert model.tiling_plan().mode == "whole"  # peers say they run whole: their tiles would not be exact
    lr = torch.rand(1, 3, 10, 7)
    expected = model.upscale(lr)
    weights = model.save_pretrained(tmp_path / "peer")  # its tensors as released: spandrel reads them back
    assert not sidecar_path(weights).exists()
    assert torch.equal(SRModel.from_pretrained(weights.parent).upscale(lr), expected)


def test_our_files_open_in_spandrel(
    tiny_generator_checkpoint, rrdbnet_checkpoint: Path, tmp_path: Path
) -> None:
    spandrel = pytest.importorskip(
        "spandrel", reason="the optional extra `peers` (installed by `make install`)"
    )
    assert (
        "dgggan_pl" in spandrel.MAIN_REGISTRY
    )  # registered by `import dgggan_pl`, whatever the import order
    lr = torch.rand(1, 3, 9, 12)
    for name, checkpoint in (
        ("dgggan", tiny_generator_checkpoint(global_skip="bicubic")),
        ("rrdbnet", rrdbnet_checkpoint),
    ):
        model = SRModel.from_pretrained(checkpoint)
        weights = model.save_pretrained(tmp_path / name)
        descriptor = spandrel.ModelLoader().load_from_file(weights)
        assert (descriptor.architecture.name, descriptor.scale, descriptor.purpose) == ("dgggan-pl", 4, "SR")
        assert torch.equal(descriptor(lr), model.upscale(lr).clamp(0, 1))
    spandrel.ModelLoader().load_from_file(weights)  # a second registration is a no-op, loading still works
    assert CONFIG_TENSOR not in SRModel.from_pretrained(weights).state_dict()  # not a weight of the network


def test_save_pretrained_needs_the_constructor_arguments(tmp_path: Path) -> None:
    hand_built = SRModel(RRDBNet(channels=8, num_blocks=1, growth=4))
    with pytest.raises(Exception, match="constructor arguments are unknown"):
        hand_built.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    given = SRModel(RRDBNet(channels=8, num_blocks=1, growth=4), config=RRDBNET_CONFIG)
    assert given.save_pretrained(tmp_path / "out").is_file()


INFERENCE_ONLY = textwrap.dedent(
    """
    import sys
    sys.modules["spandrel"] = None  # as if the optional extra were not installed: `import spandrel` fails
    import dgggan_pl.upscale
    from dgggan_pl import SRModel
    heavy = sorted(m for m in ("lightning", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics") if m in sys.modules)
    model = SRModel.from_pretrained(sys.argv[1]).enable_tiling(4)
    import torch
    sr = model.upscale(torch.zeros(3, 5, 6, dtype=torch.uint8))
    print(heavy, tuple(sr.shape))
    """
)


def test_inference_imports_neither_lightning_nor_hydra_and_needs_no_spandrel(
    tiny_generator_checkpoint,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", INFERENCE_ONLY, str(tiny_generator_checkpoint())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[] (3, 20, 24)"
