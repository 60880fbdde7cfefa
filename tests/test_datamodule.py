"""SRDataModule from the real configs: shapes, alignment, reproducibility, DDP sharding, bad input."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from dgggan_pl.data.datamodule import SRDataModule
from dgggan_pl.data.datasets import FolderPairs, TrainPatchDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.resumable_loader import ResumableLoader, SkippingEpochSampler
from dgggan_pl.data.sample_images import SampleImages
from dgggan_pl.data.seeded_samplers import EpochSeededSampler, evaluation_sampler

SCALE = 4
PATCH = 32  # HR crop in these tests (LR 8): tiny and fast


def _batch_ok(batch: dict, batch_size: int, lr_size: int | None = None) -> None:
    lr, hr = batch["lr"], batch["hr"]
    assert lr.dim() == hr.dim() == 4 and lr.shape[:2] == (batch_size, 3) and hr.shape[:2] == (batch_size, 3)
    assert hr.shape[-2:] == (lr.shape[-2] * SCALE, lr.shape[-1] * SCALE)
    if lr_size is not None:
        assert lr.shape[-2:] == (lr_size, lr_size)
    for t in (lr, hr):
        assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    assert isinstance(batch["name"], list) and all(isinstance(n, str) for n in batch["name"])


def _write_block_pairs(root: Path, count: int = 3, lr_size: int = 16) -> tuple[Path, Path]:
    """HR = each LR pixel repeated in an s x s block, so `hr[::s, ::s] == lr` exposes any misalignment."""
    rng = np.random.default_rng(1)
    hr_dir, lr_dir = root / "hr_sub", root / "lr_sub"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    for i in range(count):
        lr = rng.integers(0, 256, (lr_size, lr_size + 4, 3), dtype=np.uint8)
        Image.fromarray(lr).save(lr_dir / f"{i:04d}_s001.png")
        Image.fromarray(lr.repeat(SCALE, 0).repeat(SCALE, 1)).save(hr_dir / f"{i:04d}_s001.png")
    return hr_dir, lr_dir


@pytest.fixture(scope="module")
def sample_cfg() -> DictConfig:
    from dgggan_pl.config import compose_config

    return compose_config(["data=sample", f"hr_patch_size={PATCH}"])


def test_sample_set_loads_without_network(sample_cfg: DictConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    datamodule = instantiate(sample_cfg.data)
    assert isinstance(datamodule, SRDataModule)
    assert datamodule.val_set_names == ["Sample"] and datamodule.test_set_names == ["Sample"]
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    _batch_ok(batch, sample_cfg.data.batch_size, PATCH // SCALE)
    val_loaders = datamodule.val_dataloader()
    assert len(val_loaders) == 1
    names = [b["name"][0] for b in val_loaders[0]]
    assert names == list(sample_cfg.data.val_sources.Sample.names)
    datamodule.setup("test")
    for item in datamodule.test_dataloader()[0]:
        _batch_ok(item, 1)


def test_div2k_config_on_prepared_folders(
    compose: Callable[..., DictConfig], tmp_path: Path, benchmark_dir: Path
) -> None:
    hr_dir, lr_dir = _write_block_pairs(tmp_path)
    cfg = compose(
        [
            f"hr_patch_size={PATCH}",
            f"paths.benchmark_dir={benchmark_dir}",
            f"data.train_source.hr_dir={hr_dir}",
            f"data.train_source.lr_dir={lr_dir}",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.pin_memory=false",
            "data.test_sets=[Set5,Set14]",
        ]
    )
    datamodule = instantiate(cfg.data)
    assert datamodule.val_set_names == ["Set5", "Set14"] and datamodule.test_set_names == ["Set5", "Set14"]
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert len(loader) == 1  # 3 sub-images, batch 2, drop_last
    batch = next(iter(loader))
    _batch_ok(batch, 2, PATCH // SCALE)
    # Aligned through crop + flip/rotation: the top-left pixel of each HR block is its LR pixel.
    assert torch.equal(batch["hr"][..., ::SCALE, ::SCALE], batch["lr"])
    datamodule.setup("test")
    lengths = [len(loader) for loader in datamodule.test_dataloader()]
    assert lengths == [5, 14]


def test_generated_lr_is_imresize_of_hr_crop() -> None:
    """On-the-fly LR is exactly imresize of the (cropped, flipped, rotated) HR patch."""
    dataset = TrainPatchDataset(
        SampleImages(["astronaut"]), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=16
    )
    for index in range(16):
        item = dataset[(0, index)]
        hr = (item["hr"] * 255).round().to(torch.uint8)
        lr = (item["lr"] * 255).round().to(torch.uint8)
        assert torch.equal(imresize(hr, scale=1 / SCALE), lr)


def _stream(dataset: TrainPatchDataset, num_workers: int, epoch: int, seed: int = 0) -> torch.Tensor:
    sampler = EpochSeededSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=num_workers)
    return torch.cat([batch["hr"] for batch in loader])


def test_augmentation_reproducible_across_worker_counts(tmp_path: Path) -> None:
    hr_dir, lr_dir = _write_block_pairs(tmp_path)
    dataset = TrainPatchDataset(
        FolderPairs(hr_dir, lr_dir, SCALE), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=8
    )
    reference = _stream(dataset, num_workers=0, epoch=0)
    assert torch.equal(reference, _stream(dataset, num_workers=2, epoch=0))
    assert not torch.equal(reference, _stream(dataset, num_workers=0, epoch=1))
    dataset_other_seed = TrainPatchDataset(
        FolderPairs(hr_dir, lr_dir, SCALE), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=8, seed=1
    )
    assert not torch.equal(reference, _stream(dataset_other_seed, num_workers=0, epoch=0, seed=1))


class _CountingPairs:
    """Sample-set images that record which source indices were loaded (a list shared with the test)."""

    def __init__(self, loaded: list[int]) -> None:
        self.images = SampleImages(["astronaut", "chelsea", "coffee"])
        self.loaded = loaded

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor, str]:
        self.loaded.append(index)
        return self.images.load(index)


def _resumable(
    dataset: TrainPatchDataset, num_workers: int, epoch: int, num_replicas: int = 1, rank: int = 0
) -> ResumableLoader:
    sampler = SkippingEpochSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=5, drop_last=True
    )
    sampler.set_epoch(epoch)  # what Lightning does at each epoch start
    return ResumableLoader(dataset, batch_size=2, sampler=sampler, drop_last=True, num_workers=num_workers)


def _hr(batches: list[dict]) -> torch.Tensor:
    return torch.cat([batch["hr"] for batch in batches])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumable_loader_continues_mid_epoch(num_workers: int) -> None:
    """k batches, state_dict, a fresh loader: the remaining batches equal an uninterrupted pass's, and the
    skipped samples are never loaded (workers prefetch ahead, but only batches handed out count)."""
    dataset = TrainPatchDataset(
        SampleImages(["astronaut", "chelsea", "coffee"]),
        scale=SCALE,
        hr_patch_size=PATCH,
        samples_per_epoch=12,
    )
    straight = list(_resumable(dataset, num_workers, epoch=1))
    assert len(straight) == 6
    first = _resumable(dataset, num_workers, epoch=1)
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(2)]
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 2
    del iterator

    loaded: list[int] = []
    fresh = _resumable(
        TrainPatchDataset(_CountingPairs(loaded), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=12),
        num_workers=0,
        epoch=0,
    )
    fresh.load_state_dict(state)
    assert fresh.sampler.epoch == 1
    fresh.sampler.set_epoch(1)
    rest = list(fresh)
    assert torch.equal(_hr(consumed + rest), _hr(straight))
    assert len(loaded) == 2 * len(rest)  # the 4 skipped samples were dropped as indices, not read
    assert fresh.state_dict()["batches"] == 6
    # the next epoch starts from its first batch again
    fresh.sampler.set_epoch(2)
    assert torch.equal(_hr(list(fresh)), _hr(list(_resumable(dataset, 0, epoch=2))))


def test_resumable_loader_state_edge_cases() -> None:
    dataset = TrainPatchDataset(
        SampleImages(["astronaut"]), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=8
    )
    loader = _resumable(dataset, 0, epoch=3)
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["batches"] == 0
    whole = list(loader)
    finished = loader.state_dict()
    assert finished["batches"] == len(whole) == finished["batches_per_epoch"] == 4
    fresh = _resumable(dataset, 0, epoch=0)
    fresh.load_state_dict(finished)  # a finished epoch resumes at the start of the next one
    assert fresh.sampler.epoch == 4 and len(list(fresh)) == 4
    other_batch = ResumableLoader(
        dataset, batch_size=4, sampler=SkippingEpochSampler(dataset, num_replicas=1, rank=0), drop_last=True
    )
    with pytest.raises(ValueError, match="data.batch_size"):
        other_batch.load_state_dict({**finished, "batches": 1})
    with pytest.raises(ValueError, match="SkippingEpochSampler"):
        ResumableLoader(dataset, batch_size=2, drop_last=True)
    stale = _resumable(dataset, 0, epoch=0)
    stale.load_state_dict({**finished, "batches": 1})
    stale.sampler.set_epoch(5)  # a trainer that disagrees with the loader's saved epoch
    with pytest.raises(RuntimeError, match="epoch 3"):
        next(iter(stale))


def test_resumable_loader_skips_within_each_ddp_shard() -> None:
    dataset = TrainPatchDataset(
        SampleImages(["astronaut"]), scale=SCALE, hr_patch_size=PATCH, samples_per_epoch=16
    )
    for rank in (0, 1):
        straight = list(_resumable(dataset, 0, epoch=0, num_replicas=2, rank=rank))
        first = _resumable(dataset, 0, epoch=0, num_replicas=2, rank=rank)
        consumed = list(itertools.islice(first, 1))
        fresh = _resumable(dataset, 0, epoch=0, num_replicas=2, rank=rank)
        fresh.load_state_dict(first.state_dict())
        assert torch.equal(_hr(consumed + list(fresh)), _hr(straight))
    with pytest.raises(ValueError, match="number of devices"):
        _resumable(dataset, 0, epoch=0).load_state_dict(first.state_dict())


def test_ddp_shards_partition_training_and_evaluation() -> None:
    keys = [
        list(EpochSeededSampler(range(10), num_replicas=2, rank=r, shuffle=True, seed=3, drop_last=True))
        for r in (0, 1)
    ]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(i for _, i in keys[0] + keys[1]) == list(range(10))
    shards = [list(evaluation_sampler(range(5), num_replicas=2, rank=r)) for r in (0, 1)]
    # padded to equal shards: every image at least once, the repeat de-duplicated by the metrics (by name)
    assert shards == [[0, 2, 4], [1, 3, 0]]
    assert list(evaluation_sampler(range(5), num_replicas=1, rank=0)) == list(range(5))
    # more ranks than images: every rank still gets one (no rank without a validation step)
    assert [list(evaluation_sampler(range(2), num_replicas=3, rank=r)) for r in range(3)] == [[0], [1], [0]]


def test_patch_not_divisible_names_key(compose: Callable[..., DictConfig]) -> None:
    cfg = compose(["data=sample", "hr_patch_size=50"])
    with pytest.raises(InstantiationException, match="hr_patch_size"):
        instantiate(cfg.data)


def test_bad_training_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dgggan_pl.prepare"):
        FolderPairs(tmp_path / "missing", None, SCALE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        FolderPairs(tmp_path / "empty", None, SCALE)
    hr_dir, lr_dir = _write_block_pairs(tmp_path / "pairs", count=2)
    (lr_dir / "0001_s001.png").unlink()
    with pytest.raises(FileNotFoundError, match="0001_s001"):
        FolderPairs(hr_dir, lr_dir, SCALE)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(lr_dir / "0001_s001.png")
    dataset = TrainPatchDataset(FolderPairs(hr_dir, lr_dir, SCALE), scale=SCALE, hr_patch_size=PATCH)
    with pytest.raises(ValueError, match="0001_s001.png.*size mismatch|size mismatch.*0001_s001.png"):
        dataset[1]


def test_image_smaller_than_crop_named() -> None:
    dataset = TrainPatchDataset(SampleImages(["chelsea"]), scale=SCALE, hr_patch_size=512)
    with pytest.raises(ValueError, match="chelsea.*smaller than the crop"):
        dataset[0]


class _TinySR(pl.LightningModule):
    """Nearest-neighbour x4 plus one 1x1 conv: just enough to drive the loaders through a real Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.val_names: list[tuple[int, str]] = []
        self.train_keys: list[str] = []

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.interpolate(lr, scale_factor=SCALE))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.train_keys += batch["name"]
        return torch.nn.functional.l1_loss(self(batch["lr"]), batch["hr"])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        assert self(batch["lr"]).shape == batch["hr"].shape
        self.val_names.append((dataloader_idx, batch["name"][0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_trainer_uses_the_loaders(sample_cfg: DictConfig, tmp_path: Path) -> None:
    """Lightning keeps our samplers (no injection), reseeds per epoch and runs one dataloader per set."""
    datamodule = instantiate(sample_cfg.data, samples_per_epoch=8, batch_size=4)
    model = _TinySR()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 4  # 2 epochs x 8 samples / batch 4
    assert isinstance(trainer.train_dataloader.sampler, EpochSeededSampler)
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch
    assert model.val_names[:2] == [(0, "chelsea"), (0, "rocket")]


class _RecordingSR(_TinySR):
    """Writes what each rank saw to `<out>/rank<r>.json` (spawned processes cannot return it)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def on_fit_end(self) -> None:
        seen = {"val": self.val_names, "train": self.train_keys}
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_ddp_two_ranks_see_disjoint_shards(sample_cfg: DictConfig, tmp_path: Path) -> None:
    """2-process CPU DDP: every validation image is seen, each rank runs the same number of validation steps
    (3 images: padded to 2 per rank, so exactly one image is repeated; the metrics drop the repeat by image name,
    tests/test_metrics_ddp.py); each rank trains on its half of the samples."""
    cfg = sample_cfg.copy()
    cfg.data.val_sources.Sample.names = ["chelsea", "rocket", "coffee"]
    datamodule = instantiate(cfg.data, samples_per_epoch=8, batch_size=2)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(_RecordingSR(str(tmp_path)), datamodule=datamodule)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    val = sorted(name for rank in seen for _, name in rank["val"])
    assert set(val) == {"chelsea", "coffee", "rocket"}
    assert len(seen[0]["val"]) == len(seen[1]["val"]) == 2  # equal step counts: no rank waits in a collective
    assert len(val) - len(set(val)) == 1  # the padding repeats exactly one image
    assert len(seen[0]["train"]) == len(seen[1]["train"]) == 4


def test_batch_size_is_global_and_split_over_processes(sample_cfg: DictConfig) -> None:
    """data.batch_size=4 on 2 processes: 2 crops per process per iteration, 4 in all (the paper's batch)."""
    from types import SimpleNamespace

    from dgggan_pl.config import ConfigError
    from dgggan_pl.data.datamodule import per_process_batch

    batches = []
    for rank in (0, 1):
        datamodule = instantiate(sample_cfg.data, samples_per_epoch=8, batch_size=4)
        datamodule.trainer = SimpleNamespace(
            distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}, overfit_batches=0
        )
        batches.append(next(iter(datamodule.train_dataloader())))
    assert [len(batch["name"]) for batch in batches] == [2, 2]
    assert per_process_batch(16, 8) == 2 and per_process_batch(16, 1) == 16
    with pytest.raises(ConfigError, match=r"data.batch_size=3 \(the global batch\) does not divide over 2"):
        per_process_batch(3, 2)
    with pytest.raises(InstantiationException, match="data.batch_size=0: must be a positive global batch"):
        instantiate(sample_cfg.data, batch_size=0)
