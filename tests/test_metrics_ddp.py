"""PSNR/SSIM/NIQE are identical image by image, batched, and over any number of ranks with the evaluation sampler.

The fast tests simulate the ranks in one process: each rank's metrics are updated with its shard, then synced
through torchmetrics' own sync path with a gather that hands every rank all ranks' tensors, as
`gather_all_tensors` does, and refuses what a real process group refuses (a dtype or a call count that differs
between ranks). The slow tests run real gloo processes.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from dgggan_pl.data.seeded_samplers import evaluation_sampler
from dgggan_pl.metrics.per_image import PerImageMetric
from dgggan_pl.metrics.suite import BenchmarkMetrics

NUM_IMAGES, WORLD_SIZE = 5, 2  # 5 images on 2 ranks: DistributedSampler pads with a repeated image
METRICS = ["psnr", "ssim", "niqe"]
SMALL = (24, 32)  # enough for SSIM's 11x11 window after the 4-pixel border


def _images(height: int = 120, width: int = 216) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(NUM_IMAGES, 3, height, width, generator=gen)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    return sr, hr, [f"img{i}" for i in range(NUM_IMAGES)]


def _suite(model_path: str) -> BenchmarkMetrics:
    return BenchmarkMetrics(4, METRICS, niqe_model_path=model_path, niqe_model_url=None)


Shard = Callable[[int, int], list[int]]  # (world size, rank) -> image indices


def padded_shard(world_size: int, rank: int) -> list[int]:
    return list(evaluation_sampler(range(NUM_IMAGES), world_size, rank))


def unpadded_shard(world_size: int, rank: int) -> list[int]:
    """Every `world_size`-th image, no repeats: a rank gets no image once the world is larger than the set
    (Lightning's `UnrepeatedDistributedSampler`, the previous evaluation sampler, asserts on that case)."""
    return list(range(rank, NUM_IMAGES, world_size))


def _per_image_metrics(suite: BenchmarkMetrics) -> dict[str, PerImageMetric]:
    return {key: metric for key, metric in suite.scores.items() if isinstance(metric, PerImageMetric)}


def simulate_ranks(suites: Sequence[BenchmarkMetrics]) -> list[dict[str, float]]:
    """`compute()` of each rank's suite, synchronised as over a real process group of `len(suites)` ranks."""
    sent: list[dict[str, list[Tensor]]] = []
    for suite in suites:  # what each rank hands to the gather, in call order (on a copy: sync mutates)
        record: dict[str, list[Tensor]] = {}
        for key, metric in _per_image_metrics(copy.deepcopy(suite)).items():
            calls = record.setdefault(key, [])
            metric.sync(
                dist_sync_fn=lambda t, group=None, calls=calls: calls.append(t.clone()) or [t],
                distributed_available=lambda: True,
            )
        sent.append(record)
    results = []
    for suite in suites:
        for key, metric in _per_image_metrics(suite).items():
            received = iter(range(len(sent[0][key])))

            def gather(
                tensor: Tensor, group: object = None, key: str = key, received=received
            ) -> list[Tensor]:
                call = next(received)
                tensors = [rank[key][call] for rank in sent]
                assert len({len(rank[key]) for rank in sent}) == 1, f"{key}: ranks make different gathers"
                assert len({t.dtype for t in tensors}) == 1, f"{key}: dtypes differ across ranks: {tensors}"
                assert len({t.dim() for t in tensors}) == 1, f"{key}: ranks differ in dimensions"
                return tensors

            metric.dist_sync_fn = gather
            metric.distributed_available_fn = lambda: True
        results.append(suite.compute())
    return results


@pytest.mark.parametrize("shard", [padded_shard, unpadded_shard], ids=["padded", "unpadded"])
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # the unpadded ranks without images
def test_every_world_size_from_1_to_8_equals_one_process(shard: Shard) -> None:
    sr, hr, names = _images(*SMALL)
    single = BenchmarkMetrics(4, ["psnr", "ssim"])
    single.update(sr, hr, names)
    expected = single.compute()
    for world_size in range(1, 9):
        shards = [shard(world_size, rank) for rank in range(world_size)]
        assert sorted(set(sum(shards, []))) == list(range(NUM_IMAGES))
        if shard is padded_shard:  # every rank runs the same number of validation steps, at least one
            assert {len(s) for s in shards} == {-(-NUM_IMAGES // world_size)}
        suites = []
        for indices in shards:  # one image per step, as validation does
            suite = BenchmarkMetrics(4, ["psnr", "ssim"])
            for i in indices:
                suite.update(sr[i : i + 1], hr[i : i + 1], [names[i]])
            suites.append(suite)
        for rank, values in enumerate(simulate_ranks(suites)):
            assert values == expected, f"world size {world_size}, rank {rank}"


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_a_rank_without_images_gathers_states_of_the_same_dtypes() -> None:
    """torchmetrics' own placeholder for an empty list state is float32; scores are float64, keys int64."""
    sr, hr, names = _images(*SMALL)
    scored, empty = BenchmarkMetrics(4, ["psnr"]), BenchmarkMetrics(4, ["psnr"])
    scored.update(sr[:1], hr[:1], names[:1])
    values = simulate_ranks([scored, empty])
    reference = BenchmarkMetrics(4, ["psnr"])
    reference.update(sr[:1], hr[:1], names[:1])
    assert values[0] == values[1] == reference.compute()
    assert empty.scores["psnr"].scores == [], "the placeholder must not outlive the sync"


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
