"""Peer models from their weights (spandrel): evaluate rows, upscale, complexity, and the files refused.

Every weights file is made here: spandrel's own ESRGAN and RCAN classes at tiny sizes with random weights,
saved as plain state dicts, as the authors release theirs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import save_file

from dgggan_pl import SRModel, upscale
from dgggan_pl.complexity import complexity_rows, count_gflops, count_parameters
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.io import read_image, save_image
from dgggan_pl.evaluate import evaluate
from dgggan_pl.methods import MethodError, build_methods
from dgggan_pl.metrics.fidelity import psnr_y
from dgggan_pl.models.baselines import RRDBNet
from dgggan_pl.peers import PeerError, PeerGenerator, is_peer_file, load_peer

spandrel = pytest.importorskip("spandrel", reason="the optional extra `peers` (installed by `make install`)")
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.RCAN import RCAN  # noqa: E402

SCALE = 4
BORDER = 4  # conf/metrics: crop_border = scale


def _save(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def esrgan_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return _save(ESRGAN(num_filters=8, num_blocks=1), tmp_path / "RRDB_tiny_x4.pth")


@pytest.fixture
def rcan_file(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    return _save(RCAN(n_resgroups=1, n_resblocks=1, n_feats=16, reduction=16), tmp_path / "RCAN_tiny_x4.pth")


def _direct(path: Path, lr: torch.Tensor) -> torch.Tensor:
    """A plain spandrel forward of `path`, bypassing dgggan_pl.peers."""
    descriptor = spandrel.ModelLoader().load_from_file(path).eval()
    return descriptor(lr.clone())


@pytest.fixture
def tiny_benchmark(tmp_path: Path) -> Path:
    """A benchmark folder `Tiny/HR` of two small photos-like images (LR made by MATLAB bicubic)."""
    torch.manual_seed(2)
    for name, (height, width) in {"a": (32, 40), "b": (36, 28)}.items():
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6), size=(height, width), mode="bicubic")
        save_image(smooth[0].clamp(0, 1), tmp_path / "bench" / "Tiny" / "HR" / f"{name}.png")
    return tmp_path / "bench"


def test_evaluate_rows_equal_a_direct_spandrel_forward(
    compose, tmp_path: Path, tiny_benchmark: Path, esrgan_file: Path, rcan_file: Path, one_torch_thread: None
) -> None:
    cfg = compose(
        [
            f"paths.benchmark_dir={tiny_benchmark}",
            "sets=[Tiny]",
            "lr_source=generated",
            "progress=false",
            "device=cpu",
            "metrics.benchmark.metrics=[psnr,ssim]",
            f'models=["spandrel:ESRGAN (random)={esrgan_file}",{rcan_file}]',
        ],
        config_name="evaluate",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    results = evaluate(cfg)
    assert list(results) == ["ESRGAN (random)", "RCAN_tiny_x4"]
    dataset = BenchmarkDataset(tiny_benchmark / "Tiny", SCALE, "generated")
    for label, path in (("ESRGAN (random)", esrgan_file), ("RCAN_tiny_x4", rcan_file)):
        direct = [
            float(psnr_y(_direct(path, item["lr"][None]), item["hr"][None], BORDER)) for item in dataset
        ]
        assert results[label]["Tiny"].values["psnr"] == pytest.approx(sum(direct) / len(direct), abs=1e-9)
    table3 = (tmp_path / "out" / "table3_psnr_ssim.md").read_text()
    assert f"| ESRGAN (random) | spandrel ESRGAN (8nf, 1nb): {esrgan_file} |" in table3
    assert f"| RCAN_tiny_x4 | spandrel RCAN (16nf, 1nrg, 1nrb): {rcan_file} |" in table3


def test_rcan_does_not_change_the_benchmark_input(rcan_file: Path) -> None:
    # spandrel's RCAN multiplies its input by 255 in place: a row must not corrupt the LR of the next row.
    generator, _ = load_peer(rcan_file)
    lr = torch.rand(1, 3, 9, 11)
    before = lr.clone()
    sr = generator(lr).sr
    assert torch.equal(lr, before)
    assert sr.shape == (1, 3, 36, 44) and sr.min() >= 0 and sr.max() <= 1
    assert torch.equal(sr, _direct(rcan_file, before))


def test_safetensors_without_our_config_is_a_peer(tmp_path: Path, esrgan_file: Path) -> None:
    state = torch.load(esrgan_file, weights_only=True)
    path = tmp_path / "esrgan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    assert is_peer_file(path) and is_peer_file(esrgan_file)
    model = SRModel.from_pretrained(path)  # the loader `upscale --weights` uses
    assert isinstance(model.generator, PeerGenerator) and model.generator.architecture == "ESRGAN"
    lr = torch.rand(1, 3, 6, 7)
    assert torch.equal(model(lr).sr, _direct(esrgan_file, lr))


def test_upscale_cli_runs_a_peer_on_the_whole_image(
    tmp_path: Path, esrgan_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = torch.rand(3, 10, 13)
    save_image(image, tmp_path / "in.png")
    lr = read_image(tmp_path / "in.png")
    code = upscale.main(
        [
            str(tmp_path / "in.png"),
            str(tmp_path / "out.png"),
            "--weights",
            str(esrgan_file),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "it runs on the whole image (--tile ignored)" in capsys.readouterr().err
    expected = _direct(esrgan_file, lr[None].float() / 255)[0]
    written = read_image(tmp_path / "out.png")
    assert written.shape == (3, 40, 52)
    # Rounded as every written image is; channels_last convolutions may differ in the last float bit.
    assert (written.int() - torch.floor(expected * 255 + 0.5).int()).abs().max() <= 1


def test_memory_estimate_grows_with_the_area_and_refuses_too_large(tmp_path: Path, esrgan_file: Path) -> None:
    model = SRModel.from_pretrained(esrgan_file).enable_tiling(4)
    small, large = model.estimate_memory(10, 10), model.estimate_memory(20, 20)  # the peer's own estimate
    assert large.tile == pytest.approx(4 * small.tile, rel=0.01) and small.tile > 0
    assert small.tile == model.generator.activation_bytes(10, 10)
    assert model.tiling_plan().mode == "whole"  # never tiled: tiles of a peer would not be exact
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    with pytest.raises(upscale.InsufficientMemoryError, match="64x64 -> 256x256 needs about") as error:
        upscale.check_memory(model, image, limit=1024)
    assert "--tile" not in str(error.value)  # peers are never tiled, so no tile advice


def test_other_scales_are_refused_naming_file_and_scale(tmp_path: Path) -> None:
    path = _save(ESRGAN(num_filters=8, num_blocks=1, scale=2), tmp_path / "x2.pth")
    with pytest.raises(
        PeerError, match=r"^\S*x2\.pth: ESRGAN is a x2 model; only x4 models can be used here$"
    ):
        load_peer(path)


def test_unknown_layouts_name_spandrels_reason(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, unknown)
    with pytest.raises(PeerError) as error:
        load_peer(unknown)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{unknown}: unknown weights format")
    assert "spandrel does not recognise it" in message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(PeerError, match=r"empty\.pth: unknown weights format .* nor a readable PyTorch file"):
        load_peer(empty)


class _RunsCode:
    """Pickles as a call to os.mkdir: unpickling it with plain pickle creates the marker folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path: Path, esrgan_file: Path) -> None:
    state = dict(torch.load(esrgan_file, weights_only=True))
    marker = tmp_path / "code-was-run"
    state["model.0.weight_extra"] = _RunsCode(marker)
    path = tmp_path / "trojan.pth"
    torch.save(state, path)
    with pytest.raises(PeerError, match=r"trojan\.pth: refused to load: .* could run code"):
        load_peer(path)
    with pytest.raises(PeerError, match="refused to load"):
        SRModel.from_pretrained(path)  # `upscale --weights` takes the same road
    assert not marker.exists()
    # The file really is hostile: an unrestricted load runs its code.
    torch.load(path, weights_only=False, pickle_module=pickle)
    assert marker.is_dir()


def test_model_entries_are_checked_before_work(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match=r"must read spandrel:<Label>=<weights file>"):
        build_methods(
            ["spandrel:x.pth"],
            None,
            {},
            scale=4,
            use_ema=None,
            device=torch.device("cpu"),
            result_suffixes=[],
        )
    with pytest.raises(
        MethodError, match=r"spandrel:ESRGAN=.*missing\.pth: weights file .*missing\.pth not found"
    ):
        build_methods(
            [f"spandrel:ESRGAN={tmp_path / 'missing.pth'}"],
            None,
            {},
            scale=4,
            use_ema=None,
            device=torch.device("cpu"),
            result_suffixes=[],
        )


def test_ema_is_refused_for_a_peer(esrgan_file: Path) -> None:
    with pytest.raises(PeerError, match="no EMA copy; drop --ema"):
        SRModel.from_pretrained(esrgan_file, use_ema=True)


def test_complexity_counts_a_peer_from_its_weights_file(esrgan_file: Path, rcan_file: Path) -> None:
    rows = complexity_rows((16, 16), names=[f"spandrel:ESRGAN={esrgan_file}", f"spandrel:RCAN={rcan_file}"])
    by_name = {row.name: row for row in rows}
    # spandrel's ESRGAN at 8 filters, 1 block is our RRDBNet at the same sizes (growth 32 in both).
    with torch.device("meta"):
        ours = RRDBNet(channels=8, num_blocks=1)
    assert by_name["ESRGAN"].params == count_parameters(ours)
    assert by_name["ESRGAN"].gflops == pytest.approx(count_gflops(ours, (16, 16)), rel=1e-12)
    rcan = RCAN(n_resgroups=1, n_resblocks=1, n_feats=16, reduction=16)
    assert by_name["RCAN"].params == sum(p.numel() for p in rcan.parameters())
    assert by_name["RCAN"].gflops > 0
