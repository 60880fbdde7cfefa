"""Shared fixtures: the benchmark data folder and composing the real Hydra configs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from dgggan_pl.config import compose_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ctrl+C as a terminal delivers it: a suite started in the background (`make test &`, nohup) inherits SIGINT
# ignored, and so would every CLI it starts, so the tests of what SIGINT does would see nothing happen.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
DATA_ENV = "DGGGAN_DATA_DIR"
REQUIRE_ENV = "DGGGAN_REQUIRE_DATA"


def _default_data_dir() -> Path:
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder (`$DGGGAN_DATA_DIR`, default `../shared/data`).

    Skips when absent (a user's fresh machine); fails instead when `DGGGAN_REQUIRE_DATA=1` (CI).
    """
    path = Path(os.environ.get(DATA_ENV, _default_data_dir())).resolve()
    if not (path / "sr-benchmarks").is_dir():
        reason = f"benchmark data not found at {path} (set {DATA_ENV} to a folder holding sr-benchmarks/)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 forbids skipping")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def benchmark_dir(data_dir: Path) -> Path:
    return data_dir / "sr-benchmarks"


@pytest.fixture
def compose() -> Callable[..., DictConfig]:
    """`compose(["model=dgggan_lite", ...], config_name="train")` -> the composed real config."""

    def _compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
        return compose_config(overrides, config_name=config_name)

    return _compose


# A tiny generator in the layout of a training checkpoint (inference tests: weights, upscale, export).
TINY_GENERATOR_CONFIG = {
    "_target_": "dgggan_pl.models.generator.DGGGANGenerator",
    "channels": 8,
    "num_blocks": 2,
    "injection_blocks": [1],
    "se_reduction": 4,
}


@pytest.fixture
def tiny_generator_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """`make(name="tiny.ckpt", ema=False, **generator_overrides)` -> a Lightning-style `.ckpt` of a random tiny
    generator: `state_dict` keys `generator.*` (+ `generator_ema.*`), `hyper_parameters["model"]["generator"]`."""
    import torch
    from hydra.utils import instantiate

    def _make(name: str = "tiny.ckpt", ema: bool = False, **overrides: object) -> Path:
        config = {**TINY_GENERATOR_CONFIG, **overrides}
        torch.manual_seed(0)
        state = {f"generator.{k}": v for k, v in instantiate(config).state_dict().items()}
        if ema:
            state |= {f"generator_ema.{k}": v for k, v in instantiate(config).state_dict().items()}
        path = tmp_path / name
        torch.save({"state_dict": state, "hyper_parameters": {"model": {"generator": config}}}, path)
        return path

    return _make


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny convs gain nothing from threads, and on a busy 2-core box OpenMP spinning makes them 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
