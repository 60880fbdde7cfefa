"""PSNR/SSIM/NIQE are identical image by image, batched, and over 2 CPU processes (gloo) with a padded sampler."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from dgggan_pl.metrics.suite import BenchmarkMetrics

NUM_IMAGES, WORLD_SIZE = 5, 2  # 5 images on 2 ranks: DistributedSampler pads with a repeated image
METRICS = ["psnr", "ssim", "niqe"]


def _images() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(NUM_IMAGES, 3, 120, 216, generator=gen)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    return sr, hr, [f"img{i}" for i in range(NUM_IMAGES)]


def _suite(model_path: str) -> BenchmarkMetrics:
    return BenchmarkMetrics(4, METRICS, niqe_model_path=model_path, niqe_model_url=None)


def _worker(rank: int, port: int, model_path: str, out: str) -> None:
    from torch.utils.data import DistributedSampler

    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=WORLD_SIZE, init_method=f"tcp://127.0.0.1:{port}"
    )
    try:
        sr, hr, names = _images()
        indices = list(DistributedSampler(range(NUM_IMAGES), WORLD_SIZE, rank, shuffle=False))
        metrics = _suite(model_path)
        for i in indices:  # one image per step, as validation does
            metrics.update(sr[i : i + 1], hr[i : i + 1], [names[i]])
        values = metrics.compute()
        if rank == 0:
            Path(out).write_text(json.dumps({"values": values, "rank0_indices": indices}))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_batched_equals_one_by_one(data_dir: Path) -> None:
    model = str(data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat")
    sr, hr, names = _images()
    batched, single = _suite(model), _suite(model)
    batched.update(sr, hr, names)
    for i, name in enumerate(names):
        single.update(sr[i : i + 1], hr[i : i + 1], [name])
    assert batched.compute() == single.compute()
    assert batched.per_image() == single.per_image()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP on localhost")
def test_two_process_ddp_equals_single_process(data_dir: Path, tmp_path: Path) -> None:
    model = str(data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat")
    out = tmp_path / "ddp.json"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), model, str(out)), nprocs=WORLD_SIZE, join=True)
    result = json.loads(out.read_text())
    assert len(result["rank0_indices"]) * WORLD_SIZE > NUM_IMAGES, "the sampler must have padded"
    sr, hr, names = _images()
    single = _suite(model)
    for i, name in enumerate(names):
        single.update(sr[i : i + 1], hr[i : i + 1], [name])
    assert result["values"] == single.compute()
