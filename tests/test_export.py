"""Export: safetensors + JSON that load back, and an ONNX graph with dynamic H/W matching PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from dgggan_pl.export import ONNX_CHECK_RTOL, ExportError, _OnnxGenerator, check_onnx, main
from dgggan_pl.weights import load_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
