"""BenchmarkMetrics: keys, modes, deduplication of repeated images, unavailable metrics and their reasons."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dgggan_pl.metrics.niqe import NIQEModelError
from dgggan_pl.metrics.suite import BenchmarkMetrics

HAS_PYIQA = importlib.util.find_spec("pyiqa") is not None
SHA = "fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d"
UNREACHABLE_URL = "http://127.0.0.1:9/modelparameters.mat"  # a closed local port: fails at once, offline


@pytest.fixture(scope="module")
def niqe_model(data_dir: Path) -> Path:
    return data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"


def _pair(seed: int, batch: int = 3, size: tuple[int, int] = (120, 216)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, *size, generator=gen)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    return sr, hr


@pytest.mark.filterwarnings(
    "ignore:LPIPS uses a RANDOM", "ignore:metric 'ma' unavailable", "ignore:metric 'pi'"
)
def test_config_builds_one_suite_per_set(compose, niqe_model: Path) -> None:
    cfg = compose(["metrics.lpips=random", f"metrics.niqe_model_path={niqe_model}"])
    factory = instantiate(cfg.metrics.benchmark)
    first, second = factory(), factory()
    sr, hr = _pair(0)
    first.update(sr, hr, ["a", "b", "c"])
    values = first.compute()
    assert {"psnr", "ssim", "lpips_random_backbone", "niqe"} <= set(values)
    assert "lpips" not in values, "a random backbone must never be reported as lpips"
    assert 20 < values["psnr"] < 40 and 0 < values["ssim"] < 1 and values["niqe"] > 0
    assert first.scores is not second.scores
    # the LPIPS network and NIQE model never enter a checkpoint
    assert list(first.state_dict()) == [] and sum(p.numel() for p in first.parameters()) == 0


@pytest.mark.skipif(HAS_PYIQA, reason="pyiqa installed: Ma/PI are available")
def test_missing_pyiqa_makes_ma_and_pi_unavailable(niqe_model: Path) -> None:
    metrics = BenchmarkMetrics(
        4, ["psnr", "niqe", "pi"], niqe_model_path=str(niqe_model), niqe_model_sha256=SHA
    )
    assert "pyiqa is not installed" in metrics.unavailable["ma"]
    assert "pip install 'dgggan-pl[pi]'" in metrics.unavailable["ma"]
    assert metrics.unavailable["pi"].startswith("needs ma")
    metrics.update(*_pair(1), ["a", "b", "c"])
    assert set(metrics.compute()) == {"psnr", "niqe"}


def test_repeated_images_count_once() -> None:
    """A padded distributed sampler repeats images: with names they are averaged once."""
    sr, hr = _pair(2)
    once = BenchmarkMetrics(4, ["psnr", "ssim"])
    once.update(sr, hr, ["a", "b", "c"])
    padded = BenchmarkMetrics(4, ["psnr", "ssim"])
    padded.update(sr[:2], hr[:2], ["a", "b"])
    padded.update(sr[[2, 0]], hr[[2, 0]], ["c", "a"])
    assert padded.compute() == once.compute()
    assert set(padded.per_image()) == {"a", "b", "c"}
    unnamed = BenchmarkMetrics(4, ["psnr"])
    unnamed.update(sr, hr)
    unnamed.update(sr[:1], hr[:1])
    assert unnamed.compute()["psnr"] != once.compute()["psnr"], "without names repeats cannot be dropped"


def test_reset_clears_the_set() -> None:
    metrics = BenchmarkMetrics(4, ["psnr"])
    sr, hr = _pair(3)
    metrics.update(sr, hr, ["a", "b", "c"])
    metrics.reset()
    metrics.update(sr[:1], hr[:1], ["a"])
    assert set(metrics.per_image()) == {"a"}


def test_lpips_disabled_has_no_lpips_key_and_says_so() -> None:
    metrics = BenchmarkMetrics(4, ["psnr", "lpips"], lpips="disabled")
    metrics.update(*_pair(4), ["a", "b", "c"])
    assert set(metrics.compute()) == {"psnr"}
    assert metrics.unavailable == {"lpips": "disabled (metrics.lpips=disabled)"}


def test_missing_niqe_model_is_unavailable_or_an_error(tmp_path: Path, caplog) -> None:
    missing = tmp_path / "nowhere" / "modelparameters.mat"
    kwargs = dict(
        niqe_model_path=str(missing), niqe_model_url=UNREACHABLE_URL, niqe_model_sha256=SHA, download=True
    )
    with caplog.at_level("WARNING", logger="dgggan_pl.metrics.suite"):
        metrics = BenchmarkMetrics(4, ["psnr", "niqe", "pi"], **kwargs)
        BenchmarkMetrics(4, ["psnr", "niqe", "pi"], **kwargs)  # a second set: nothing logged again
    niqe_lines = [r for r in caplog.records if "metric 'niqe' unavailable" in r.getMessage()]
    assert len(niqe_lines) == 1 and niqe_lines[0].name == "dgggan_pl.metrics.suite"
    assert str(missing) in metrics.unavailable["niqe"] and "downloading" in metrics.unavailable["niqe"]
    assert metrics.unavailable["pi"] == "needs niqe and ma (unavailable: see their reasons)"
    metrics.update(*_pair(5), ["a", "b", "c"])
    assert set(metrics.compute()) == {"psnr"}
    with pytest.raises(NIQEModelError, match="modelparameters.mat"):
        BenchmarkMetrics(4, ["niqe"], on_missing_model="error", **kwargs)
    assert not missing.exists(), "a failed download must not leave a file behind"


def test_niqe_model_is_found_offline_without_a_download(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No path given: the search list is tried first, then $TORCH_HOME; `download=False` never fetches."""
    import torch

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    shipped = data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"
    found = BenchmarkMetrics(4, ["niqe"], niqe_search_paths=[str(tmp_path / "absent.mat"), str(shipped)])
    assert "niqe" in found.scores and "niqe" not in found.unavailable
    offline = BenchmarkMetrics(4, ["niqe"], niqe_search_paths=[str(tmp_path / "absent.mat")])
    reason = offline.unavailable["niqe"]
    assert str(tmp_path / "absent.mat") in reason and "metrics.download=true" in reason
    assert "metrics.niqe_model_path" in reason and "\n" not in reason


def test_unknown_metric_names_the_key() -> None:
    with pytest.raises(ValueError, match="metrics.benchmark.metrics"):
        BenchmarkMetrics(4, ["psnr", "fid"])


def test_settings_are_the_config_keys_declared_once_in_metric_settings(compose) -> None:
    """Every key of `metrics.benchmark` is a `MetricSettings` field (none falls into `options` unread), and the
    suite built from the config holds exactly the config's values."""
    cfg = compose(["metrics.lpips=disabled", "+metrics.benchmark.my_window=7"])
    suite = instantiate(cfg.metrics.benchmark)(metrics=["psnr"])
    settings = suite.settings
    assert settings.options == {"my_window": 7}  # only the key added here is not a field
    assert settings.crop_border == cfg.scale and settings.lpips == "disabled"
    assert settings.niqe_search_paths == tuple(cfg.metrics.niqe_search_paths)  # a list in the config
    assert settings.niqe_settings["block_size"] == cfg.metrics.benchmark.niqe_settings.block_size
    with pytest.raises(ValueError, match="metrics.on_missing_model must be one of"):
        BenchmarkMetrics(4, ["psnr"], on_missing_model="ignore")
