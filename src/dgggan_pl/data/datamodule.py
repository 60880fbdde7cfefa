"""`SRDataModule`: training crops, and one whole-image dataloader per validation/test set.

Built by `hydra.utils.instantiate(cfg.data)` from `conf/data/*.yaml`. Batches are dicts with `lr` `(B, 3, h, w)`,
`hr` `(B, 3, s*h, s*w)` float in [0, 1] and `name` (list of str). `val_set_names` / `test_set_names` give the
name of each dataloader in `val_dataloader()` / `test_dataloader()` order, for metric keys `val/<Set>/<metric>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from dgggan_pl.config import ConfigError
from dgggan_pl.data.datasets import (
    LR_SOURCES,
    BenchmarkDataset,
    LrSource,
    PairSource,
    TrainPatchDataset,
    WholeImageDataset,
)
from dgggan_pl.data.resumable_loader import ResumableLoader, SkippingEpochSampler
from dgggan_pl.data.seeded_samplers import evaluation_sampler

SourceFactory = Callable[[], PairSource]


def per_process_batch(global_batch: int, world_size: int) -> int:
    """`data.batch_size` is the global batch (paper: 16): each of `world_size` processes loads its share."""
    if global_batch <= 0:
        raise ConfigError(f"data.batch_size={global_batch}: must be a positive global batch (paper: 16)")
    if global_batch % world_size:
        raise ConfigError(
            f"data.batch_size={global_batch} (the global batch) does not divide over {world_size} processes; "
            f"use a multiple of {world_size} or change trainer.devices/num_nodes"
        )
    return global_batch // world_size


class SRDataModule(pl.LightningDataModule):
    """Training pairs from a `PairSource` (prepared DIV2K sub-images, or the embedded sample set) and evaluation
    on benchmark folders `<benchmark_dir>/<Set>/{HR,LR_bicubic/X<scale>}` and/or named in-memory sets.

    Args:
        train_source: zero-argument factory (a Hydra `_partial_`) of the training `PairSource`; built in `setup`
            so that evaluation-only runs need no training data.
        scale: super-resolution factor (top-level `scale`).
        hr_patch_size: HR training crop; the LR crop is `hr_patch_size / scale` (top-level `hr_patch_size`).
        batch_size: the GLOBAL training batch (paper: 16), split evenly over the DDP processes, so the learning
            rate and schedule mean the same on any number of GPUs (validation/test use 1: image sizes differ).
        benchmark_dir: folder holding the benchmark sets (`paths.benchmark_dir`).
        val_sets / test_sets: benchmark set names, one dataloader each, in this order.
        lr_source: `shipped` (the sets' own MATLAB LR files) or `generated` (our MATLAB-compatible bicubic).
        val_sources / test_sources: extra named whole-image sets with generated LR (e.g. `Sample`), after the
            benchmark sets.
        samples_per_epoch: training samples per epoch (None: one per source image). Training is iteration-based;
            an epoch only sets when the sampler reshuffles and re-draws the augmentation.
        seed: seeds shuffling and augmentation (top-level `seed`).
        hflip / rotate: random flips / 90-degree rotations of training pairs.
    """

    def __init__(
        self,
        train_source: SourceFactory,
        scale: int,
        hr_patch_size: int,
        batch_size: int,
        benchmark_dir: str | os.PathLike | None = None,
        val_sets: Sequence[str] = (),
        test_sets: Sequence[str] = (),
        lr_source: str = "shipped",
        val_sources: Mapping[str, SourceFactory] | None = None,
        test_sources: Mapping[str, SourceFactory] | None = None,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        hflip: bool = True,
        rotate: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if hr_patch_size % scale:
            raise ValueError(
                f"top-level config key `hr_patch_size` ({hr_patch_size}) must be divisible by `scale` ({scale})"
            )
        if lr_source not in LR_SOURCES:
            raise ValueError(f"data.lr_source must be one of {LR_SOURCES}, got {lr_source!r}")
        if (val_sets or test_sets) and benchmark_dir is None:
            raise ValueError(
                "data.val_sets/test_sets need data.benchmark_dir (default ${paths.benchmark_dir})"
            )
        self.train_source = train_source
        self.scale = int(scale)
        self.hr_patch_size = int(hr_patch_size)
        self.batch_size = int(batch_size)
        per_process_batch(self.batch_size, 1)  # refuse a non-positive batch before any work
        self.benchmark_dir = None if benchmark_dir is None else Path(benchmark_dir)
        self.val_sets = list(val_sets)
        self.test_sets = list(test_sets)
        self.lr_source = lr_source
        self.val_sources = dict(val_sources or {})
        self.test_sources = dict(test_sources or {})
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.hflip = hflip
        self.rotate = rotate
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.val_set_names = self.val_sets + list(self.val_sources)
        self.test_set_names = self.test_sets + list(self.test_sources)
        for key, names in (("val", self.val_set_names), ("test", self.test_set_names)):
            if len(set(names)) != len(names):
                raise ValueError(f"data.{key}_sets/{key}_sources repeat a set name: {names}")
        self.train_dataset: TrainPatchDataset | None = None
        self.val_datasets: list[Dataset] = []
        self.test_datasets: list[Dataset] = []

    def _evaluation_datasets(
        self, sets: Sequence[str], sources: Mapping[str, SourceFactory]
    ) -> list[Dataset]:
        datasets: list[Dataset] = []
        for name in sets:
            assert self.benchmark_dir is not None  # checked in __init__
            datasets.append(
                BenchmarkDataset(
                    self.benchmark_dir / name, scale=self.scale, lr_source=cast(LrSource, self.lr_source)
                )
            )
        datasets.extend(WholeImageDataset(factory(), scale=self.scale) for factory in sources.values())
        return datasets

    def setup(self, stage: str | None = None) -> None:
        """Build only what the stage needs (`fit`: train + val, `validate`: val, `test`: test)."""
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = TrainPatchDataset(
                self.train_source(),
                scale=self.scale,
                hr_patch_size=self.hr_patch_size,
                samples_per_epoch=self.samples_per_epoch,
                seed=self.seed,
                hflip=self.hflip,
                rotate=self.rotate,
            )
        if stage in ("fit", "validate", None) and not self.val_datasets:
            self.val_datasets = self._evaluation_datasets(self.val_sets, self.val_sources)
        if stage in ("test", None) and not self.test_datasets:
            self.test_datasets = self._evaluation_datasets(self.test_sets, self.test_sources)

    def _replicas(self) -> tuple[int, int]:
        """(num_replicas, rank) of the attached trainer's strategy; (1, 0) when not distributed."""
        trainer = self.trainer
        kwargs = None if trainer is None else trainer.distributed_sampler_kwargs
        if not kwargs:
            return 1, 0
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _loader_options(self, persistent: bool) -> dict:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and persistent,
        }

    def train_dataloader(self) -> DataLoader:
        """Shuffled crops; stateful, so `ckpt_path=last` resumes mid-epoch exactly (see `data/resumable_loader.py`)."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        if self.trainer is not None and getattr(
            self.trainer, "overfit_batches", False
        ):  # set at runtime by Lightning
            # debug=overfit: unshuffled integer keys give epoch 0's crops and flips in every epoch, so the same
            # batches repeat (Lightning would otherwise swap the sampler, which ResumableLoader refuses).
            return DataLoader(
                self.train_dataset,
                batch_size=self.batch_size,
                shuffle=False,
                drop_last=True,
                **self._loader_options(persistent=True),
            )
        num_replicas, rank = self._replicas()
        sampler = SkippingEpochSampler(
            self.train_dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        return ResumableLoader(
            self.train_dataset,
            batch_size=per_process_batch(self.batch_size, num_replicas),
            sampler=sampler,
            drop_last=True,
            **self._loader_options(persistent=True),
        )

    def _evaluation_loaders(self, datasets: list[Dataset]) -> list[DataLoader]:
        num_replicas, rank = self._replicas()
        return [
            # Not persistent: one loader per set would otherwise keep num_workers processes each between validations.
            DataLoader(
                dataset,
                batch_size=1,
                sampler=evaluation_sampler(dataset, num_replicas, rank),
                **self._loader_options(persistent=False),
            )
            for dataset in datasets
        ]

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_datasets:
            self.setup("validate")
        return self._evaluation_loaders(self.val_datasets)

    def test_dataloader(self) -> list[DataLoader]:
        if not self.test_datasets:
            self.setup("test")
        return self._evaluation_loaders(self.test_datasets)
