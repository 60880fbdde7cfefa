"""Ma / PI: unavailable (with the documented reason) without pyiqa or its NRQM model; PI formula otherwise."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dgggan_pl.metrics.perceptual import NRQM_FILE, build_nrqm
from dgggan_pl.metrics.suite import BenchmarkMetrics

SHA = "fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d"


class ConstantNRQM(nn.Module):
    """Stands in for pyiqa's NRQM: a known Ma per image (mean intensity x 10), to check the PI wiring."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)) * 10


def _fake_pyiqa(monkeypatch: pytest.MonkeyPatch, download_fails: bool) -> None:
    """Install a minimal `pyiqa` with the two entry points build_nrqm uses."""

    def load_file_from_url(url: str, model_dir: str, progress: bool, file_name: str) -> str:
        if download_fails:
            raise OSError("no network in tests")
        path = Path(model_dir) / file_name
        path.write_bytes(b"model")
        return str(path)

    modules = {
        "pyiqa": types.ModuleType("pyiqa"),
        "pyiqa.archs": types.ModuleType("pyiqa.archs"),
        "pyiqa.archs.nrqm_arch": types.ModuleType("pyiqa.archs.nrqm_arch"),
        "pyiqa.utils": types.ModuleType("pyiqa.utils"),
        "pyiqa.utils.download_util": types.ModuleType("pyiqa.utils.download_util"),
    }
    modules["pyiqa.archs.nrqm_arch"].NRQM = ConstantNRQM
    modules["pyiqa.utils.download_util"].load_file_from_url = load_file_from_url
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_missing_pyiqa_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import fails even where pyiqa is installed
    module, reason = build_nrqm(4, None)
    assert module is None
    assert reason.startswith("pyiqa is not installed") and "pip install 'dgggan-pl[pi]'" in reason


def test_missing_nrqm_model_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_pyiqa(monkeypatch, download_fails=True)
    target = tmp_path / NRQM_FILE
    module, reason = build_nrqm(4, target)
    assert module is None
    assert f"NRQM model {NRQM_FILE} not found at {target}" in reason and "metrics.nrqm_model_path" in reason
    metrics = BenchmarkMetrics(
        4,
        ["psnr", "pi"],
        nrqm_model_path=str(target),
        niqe_model_path=str(target),
        niqe_model_url=None,
        download=True,
    )
    assert set(metrics.unavailable) == {"niqe", "ma", "pi"}
    assert NRQM_FILE in metrics.unavailable["ma"] and "downloading" in metrics.unavailable["ma"]
    assert metrics.unavailable["pi"] == "needs niqe and ma (unavailable: see their reasons)"


def test_nrqm_model_is_never_fetched_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_pyiqa(monkeypatch, download_fails=False)  # a download would succeed: it must not be tried
    module, reason = build_nrqm(4, tmp_path / NRQM_FILE)
    assert module is None and "metrics.download=true" in reason and not (tmp_path / NRQM_FILE).exists()


def test_pi_combines_ma_and_niqe_per_image(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    _fake_pyiqa(monkeypatch, download_fails=False)
    niqe_model = data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"
    metrics = BenchmarkMetrics(
        4,
        ["niqe", "pi"],
        niqe_model_path=str(niqe_model),
        niqe_model_sha256=SHA,
        nrqm_model_path=str(tmp_path / "m.mat"),
        download=True,  # the stand-in pyiqa "downloads" m.mat
    )
    assert metrics.unavailable == {}
    assert metrics.scores["ma"]._nrqm.kwargs["crop_border"] == 4  # PIRM convention
    images = torch.rand(2, 3, 120, 216, generator=torch.Generator().manual_seed(0))
    metrics.update(images, images, ["a", "b"])
    values, rows = metrics.compute(), metrics.per_image()
    assert values["pi"] == pytest.approx(((10 - values["ma"]) + values["niqe"]) / 2)
    for row in rows.values():
        assert row["pi"] == pytest.approx(((10 - row["ma"]) + row["niqe"]) / 2)
