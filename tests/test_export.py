"""Export: safetensors + JSON that load back, and an ONNX graph with dynamic H/W matching PyTorch."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from dgggan_pl import SRModel
from dgggan_pl.export import ONNX_CHECK_RTOL, ExportError, _OnnxGenerator, check_onnx, main
from dgggan_pl.models.baselines import RRDBNet
from dgggan_pl.weights import load_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_export_ema_to_safetensors_and_onnx(tiny_generator_checkpoint, tmp_path: Path, capsys) -> None:
    checkpoint = tiny_generator_checkpoint(ema=True)
    out = tmp_path / "exported"
    assert main([str(checkpoint), "--ema", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny_ema.json", "tiny_ema.onnx", "tiny_ema.safetensors"]
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    assert json.loads((out / "tiny_ema.json").read_text())["ema"] is True

    ema, _ = load_generator(checkpoint, use_ema=True)
    exported, _ = load_generator(out / "tiny_ema.safetensors")
    for key, value in ema.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value)

    session = onnxruntime.InferenceSession(str(out / "tiny_ema.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sr", "grad_map"]
    lr = torch.rand(1, 3, 9, 14)  # a size the exporter never saw
    sr, grad_map = session.run(None, {"lr": lr.numpy()})
    with torch.no_grad():
        expected = ema(lr)
    assert sr.shape == (1, 3, 36, 56)
    for actual, reference in ((sr, expected.sr.numpy()), (grad_map, expected.grad_map.numpy())):
        assert np.abs(actual - reference).max() <= ONNX_CHECK_RTOL * np.abs(reference).max()

    # The built-in check does fail on a graph that is not this generator's (here: the raw weights').
    raw, _ = load_generator(checkpoint, use_ema=False)
    with pytest.raises(ExportError, match="onnxruntime differs from PyTorch"):
        check_onnx(_OnnxGenerator(raw).eval(), out / "tiny_ema.onnx", name=out / "tiny_ema.onnx")

    # Existing outputs are kept; asking for EMA from a checkpoint without it is a clear error.
    assert main([str(checkpoint), "--ema", "--output-dir", str(out), "--no-onnx"]) == 2
    assert "use --overwrite" in capsys.readouterr().err
    plain = tiny_generator_checkpoint("plain.ckpt")
    assert main([str(plain), "--ema", "--output-dir", str(out), "--no-onnx"]) == 2
    assert "plain.ckpt: no EMA weights" in capsys.readouterr().err


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_default_weights_follow_the_checkpoint(tiny_generator_checkpoint, tmp_path: Path, capsys) -> None:
    """Default: EMA when present (as upscale); --no-ema takes the raw weights."""
    checkpoint = tiny_generator_checkpoint(ema=True)
    out = tmp_path / "out"
    assert main([str(checkpoint), "--out-dir", str(out), "--no-onnx"]) == 0
    assert "(EMA weights)" in capsys.readouterr().out
    assert json.loads((out / "tiny_ema.json").read_text())["ema"] is True
    assert main([str(checkpoint), "--no-ema", "--out-dir", str(out), "--no-onnx"]) == 0
    assert "(raw weights)" in capsys.readouterr().out
    assert json.loads((out / "tiny.json").read_text())["ema"] is False
    plain = tiny_generator_checkpoint("plain.ckpt")  # no EMA: the default falls back to the raw weights
    assert main([str(plain), "--out-dir", str(out), "--no-onnx"]) == 0
    assert json.loads((out / "plain.json").read_text())["ema"] is False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unwritable_output_folder_is_one_line(
    tiny_generator_checkpoint, tmp_path: Path, capsys, monkeypatch
) -> None:
    checkpoint = tiny_generator_checkpoint()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([str(checkpoint), "--out-dir", str(blocker / "sub"), "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to {blocker / 'sub'}") and err.count("\n") == 1

    # A folder that refuses writes (as a read-only one does for a non-root user): os.replace fails mid-export.
    def refuse(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "ro"
    monkeypatch.setattr(os, "replace", refuse)
    assert main([str(checkpoint), "--out-dir", str(out), "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write to {out} (Permission denied); choose another --out-dir\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tiny_generator_checkpoint, tmp_path: Path, capsys) -> None:
    checkpoint = tiny_generator_checkpoint()
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    assert main([str(checkpoint), "--out-dir", str(out), "--no-onnx"]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write to {out}")


@pytest.mark.slow
def test_onnx_matches_pytorch_with_a_bicubic_global_skip(
    tiny_generator_checkpoint, tmp_path: Path, capsys
) -> None:
    """Also: progress lines during the ONNX step, and one file mode for all outputs (.safetensors was 0600)."""
    checkpoint = tiny_generator_checkpoint("skip.ckpt", global_skip="bicubic")
    out = tmp_path / "out"
    assert main([str(checkpoint), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"onnx {i}/3: " in printed for i in (1, 2, 3)) and "onnx done in" in printed
    modes = _modes(out)
    assert sorted(modes) == ["skip.json", "skip.onnx", "skip.safetensors"]
    assert set(modes.values()) == {0o666 & ~_umask()}, modes
    generator, _ = load_generator(checkpoint)
    assert generator.global_skip == "bicubic"
    session = onnxruntime.InferenceSession(str(out / "skip.onnx"), providers=["CPUExecutionProvider"])
    lr = torch.rand(1, 3, 13, 10, generator=torch.Generator().manual_seed(1))  # a size the exporter never saw
    sr, _ = session.run(None, {"lr": lr.numpy()})
    with torch.no_grad():
        expected = generator(lr).sr.numpy()
    # The skip makes the output image-sized (~0.5), so this also checks the bicubic part, not just the residual.
    assert np.abs(expected).max() > 0.1 and np.abs(sr - expected).max() <= 1e-4


def test_nan_weights_are_one_line_and_nothing_is_written(
    tiny_generator_checkpoint, tmp_path: Path, capsys
) -> None:
    checkpoint = tiny_generator_checkpoint()
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["generator.image_out.bias"][0] = float("inf")
    torch.save(state, checkpoint)
    out = tmp_path / "exported"
    assert main([str(checkpoint), "--out-dir", str(out), "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {checkpoint}: tensor image_out.bias holds NaN/Inf (1 of 3 values")
        and err.count("\n") == 1
    )
    assert not any(out.iterdir())


@pytest.mark.slow
def test_rrdbnet_exports_to_safetensors_and_onnx(tmp_path: Path) -> None:
    """A generator without stages or a gradient map (`model=rrdbnet`) exports through the same SRModel path."""
    config = {
        "_target_": "dgggan_pl.models.baselines.rrdbnet.RRDBNet",
        "channels": 8,
        "num_blocks": 1,
        "growth": 4,
    }
    torch.manual_seed(0)
    network = RRDBNet(channels=8, num_blocks=1, growth=4)
    state = {f"generator.{key}": value for key, value in network.state_dict().items()}
    checkpoint = tmp_path / "rrdbnet.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"generator": config}}}, checkpoint)
    out = tmp_path / "out"
    assert main([str(checkpoint), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["rrdbnet.json", "rrdbnet.onnx", "rrdbnet.safetensors"]
    session = onnxruntime.InferenceSession(str(out / "rrdbnet.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sr"]  # no gradient map to export
    lr = torch.rand(1, 3, 11, 7)
    (sr,) = session.run(None, {"lr": lr.numpy()})
    model = SRModel.from_pretrained(out / "rrdbnet.safetensors")
    expected = model.upscale(lr).numpy()
    assert np.abs(sr - expected).max() <= ONNX_CHECK_RTOL * np.abs(expected).max()
