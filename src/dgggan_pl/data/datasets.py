"""Map-style datasets: whole benchmark images (val/test) and random aligned training crops.

Items are dicts `{"lr": (3, h, w), "hr": (3, s*h, s*w), "name": str}`, float32 in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import list_images, read_image, to_float
from dgggan_pl.data.transforms import (
    check_pair_sizes,
    dihedral,
    mod_crop,
    random_aligned_crop,
    random_crop,
    random_dihedral_index,
)

LrSource = Literal["shipped", "generated"]
LR_SOURCES: tuple[str, ...] = ("shipped", "generated")


def shipped_lr_dir(set_dir: Path, scale: int) -> Path:
    """The benchmark layout `<Set>/LR_bicubic/X<scale>/` (DIV2K's naming)."""
    return set_dir / "LR_bicubic" / f"X{scale}"


def generate_lr(hr: Tensor, scale: int) -> Tensor:
    """uint8 `(3, s*h, s*w)` -> uint8 `(3, h, w)` by MATLAB-compatible bicubic (how the community makes LR)."""
    return imresize(hr, scale=1.0 / scale)


class BenchmarkDataset(Dataset):
    """One benchmark set (Set5, Set14, BSD100, Urban100, ...) as whole images.

    `set_dir/HR/*.png` are the ground truths; with `lr_source="shipped"` the LR inputs are the files of the same
    name in `set_dir/LR_bicubic/X<scale>/`, with `"generated"` they are made from the mod-cropped HR by
    MATLAB-compatible bicubic. HR is always mod-cropped to a multiple of `scale`.
    """

    def __init__(self, set_dir: str | os.PathLike, scale: int = 4, lr_source: LrSource = "shipped") -> None:
        if lr_source not in LR_SOURCES:
            raise ValueError(
                f"lr_source must be one of {LR_SOURCES}, got {lr_source!r} (config key data.lr_source)"
            )
        self.set_dir = Path(set_dir)
        self.scale = int(scale)
        self.lr_source = lr_source
        self.name = self.set_dir.name
        if not self.set_dir.is_dir():
            raise FileNotFoundError(
                f"benchmark set folder not found: {self.set_dir}; point `paths.benchmark_dir` (or $DGGGAN_DATA_DIR) "
                "at the folder holding <Set>/HR and <Set>/LR_bicubic/X4 (docs/data.md)"
            )
        self.hr_paths = list_images(self.set_dir / "HR", what=f"benchmark {self.name} HR")
        self.lr_paths: list[Path] | None = None
        if lr_source == "shipped":
            lr_dir = shipped_lr_dir(self.set_dir, self.scale)
            list_images(lr_dir, what=f"benchmark {self.name} LR x{self.scale}")
            self.lr_paths = [lr_dir / p.name for p in self.hr_paths]
            missing = [str(p) for p in self.lr_paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} HR image(s) of {self.set_dir} have no LR file of the same name, e.g. {missing[0]}; "
                    "add them or use data.lr_source=generated"
                )

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        hr_path = self.hr_paths[index]
        hr = mod_crop(read_image(hr_path), self.scale)
        if self.lr_paths is None:
            lr = generate_lr(hr, self.scale)
        else:
            lr = read_image(self.lr_paths[index])
            check_pair_sizes(lr, hr, self.scale, str(self.lr_paths[index]), str(hr_path))
        return {"lr": to_float(lr), "hr": to_float(hr), "name": hr_path.stem}


def _div2k_lr_name(hr_path: Path, scale: int) -> str:
    """DIV2K's LR naming: `0001.png` -> `0001x4.png`."""
    return f"{hr_path.stem}x{scale}{hr_path.suffix}"


def match_lr_files(hr_paths: list[Path], lr_dir: Path, scale: int) -> list[Path]:
    """LR file for each HR file: same name (prepared sub-images, benchmarks) or DIV2K's `<stem>x<scale>` name."""
    list_images(lr_dir, what="LR")
    matched = []
    for hr_path in hr_paths:
        candidates = (lr_dir / hr_path.name, lr_dir / _div2k_lr_name(hr_path, scale))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no LR file for {hr_path} in {lr_dir} (looked for {candidates[0].name} and {candidates[1].name}); "
                "add it, or leave the LR folder unset to generate LR on the fly"
            )
        matched.append(found)
    return matched


class PairSource(Protocol):
    """Where training pairs come from: `load(i) -> (lr uint8 (3, h, w) or None, hr uint8 (3, H, W), name)`.

    `lr` is None when LR must be generated from the HR crop. Implementations are small and picklable, so that
    DataLoader workers get their own copy.
    """

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]: ...


class FolderPairs:
    """HR images of a folder, with LR images of the same name from `lr_dir`, or None (generate LR)."""

    def __init__(self, hr_dir: str | os.PathLike, lr_dir: str | os.PathLike | None, scale: int) -> None:
        if not Path(hr_dir).is_dir():
            raise FileNotFoundError(
                f"training HR folder not found: {hr_dir}; prepare DIV2K with `python -m dgggan_pl.prepare` "
                "(docs/data.md) or set data.train_source.hr_dir"
            )
        self.hr_paths = list_images(hr_dir, what="training HR")
        self.lr_paths = None if lr_dir is None else match_lr_files(self.hr_paths, Path(lr_dir), scale)

    def __len__(self) -> int:
        return len(self.hr_paths)

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        hr = read_image(self.hr_paths[index])
        lr = None if self.lr_paths is None else read_image(self.lr_paths[index])
        return lr, hr, str(self.hr_paths[index])


class InMemoryFolders:
    """HR images of several folders, decoded once and held in memory; LR is always generated (None).

    For training on a few hundred whole images (e.g. BSD100 + Urban100 HR for a CPU learning check), where
    decoding a large PNG for every 48-pixel crop would cost more than the training step.
    """

    def __init__(self, hr_dirs: Sequence[str | os.PathLike]) -> None:
        if not hr_dirs:
            raise ValueError(
                "InMemoryFolders needs at least one folder (config key data.train_source.hr_dirs)"
            )
        self.hr_paths = [path for folder in hr_dirs for path in list_images(folder, what="training HR")]
        self.images = [read_image(path) for path in self.hr_paths]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        return None, self.images[index], str(self.hr_paths[index])


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): augmentation is identical for any worker count."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TrainPatchDataset(Dataset):
    """Random aligned training crops with random flips and 90-degree rotations.

    Index `i` (or the `(epoch, i)` pairs that `EpochSeededSampler` yields) picks source image `i % len(source)`,
    so `samples_per_epoch` may exceed the number of images: iteration-based training just sets a long epoch.
    Items: `lr` `(3, p, p)`, `hr` `(3, s*p, s*p)` float in [0, 1], `name` the source image.
    """

    def __init__(
        self,
        source: PairSource,
        scale: int,
        hr_patch_size: int,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        hflip: bool = True,
        rotate: bool = True,
    ) -> None:
        if hr_patch_size % scale:
            raise ValueError(
                f"hr_patch_size ({hr_patch_size}) must be divisible by scale ({scale}); fix the top-level "
                "config keys `hr_patch_size` / `scale`"
            )
        self.source = source
        self.scale = scale
        self.lr_patch = hr_patch_size // scale
        self.samples_per_epoch = len(source) if samples_per_epoch is None else int(samples_per_epoch)
        self.seed = seed
        self.hflip = hflip
        self.rotate = rotate

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor | str]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        generator = sample_generator(self.seed, epoch, index)
        lr, hr, name = self.source.load(index % len(self.source))
        if lr is None:
            hr_crop = random_crop(hr, self.lr_patch * self.scale, generator, name)
        else:
            hr = mod_crop(hr, self.scale)
            check_pair_sizes(lr, hr, self.scale, f"LR of {name}", name)
            lr_crop, hr_crop = random_aligned_crop(lr, hr, self.lr_patch, self.scale, generator, name)
        transform = random_dihedral_index(generator, hflip=self.hflip, rotate=self.rotate)
        hr_crop = dihedral(hr_crop, transform).contiguous()
        # Generated LR is made from the final HR patch, so it is exactly MATLAB's downsample of what the model sees.
        lr_crop = (
            generate_lr(hr_crop, self.scale) if lr is None else dihedral(lr_crop, transform).contiguous()
        )
        return {"lr": to_float(lr_crop), "hr": to_float(hr_crop), "name": Path(name).stem}


class WholeImageDataset(Dataset):
    """Whole HR images (mod-cropped) with generated LR: the validation split of the embedded sample set."""

    def __init__(self, source: PairSource, scale: int) -> None:
        self.source = source
        self.scale = scale

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        _, hr, name = self.source.load(index)
        hr = mod_crop(hr, self.scale)
        return {"lr": to_float(generate_lr(hr, self.scale)), "hr": to_float(hr), "name": Path(name).stem}
