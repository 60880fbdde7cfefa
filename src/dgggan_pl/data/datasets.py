"""Map-style datasets: whole benchmark images (val/test) and random aligned training crops.

Items are dicts `{"lr": (3, h, w), "hr": (3, s*h, s*w), "name": str}`, float32 in [0, 1].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import (
    ImageFolderError,
    ImageReadError,
    list_images,
    probe_image,
    read_image,
    to_float,
)
from dgggan_pl.data.transforms import (
    check_pair_sizes,
    dihedral,
    mod_crop,
    random_aligned_crop,
    random_crop,
    random_dihedral_index,
)

log = logging.getLogger(__name__)

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
            raise ImageFolderError(
                f"benchmark set folder not found: {self.set_dir}; point `paths.benchmark_dir` (or $DGGGAN_DATA_DIR) "
                "at the folder holding <Set>/HR and <Set>/LR_bicubic/X4 (docs/data.md)"
            )
        self.hr_paths = list_images(self.set_dir / "HR", what=f"benchmark {self.name} HR")
        self.lr_paths: list[Path] | None = None
        if lr_source == "shipped":
            lr_dir = shipped_lr_dir(self.set_dir, self.scale)
            list_images(lr_dir, what=f"benchmark {self.name} LR x{self.scale}")
            self.lr_paths = [lr_dir / p.name for p in self.hr_paths]
            missing = [p.name for p in self.lr_paths if not p.is_file()]
            if missing:
                raise ImageFolderError(
                    f"{len(missing)} HR image(s) of {self.set_dir} have no LR file of the same name in {lr_dir}: "
                    f"{', '.join(missing)}; add them or use data.lr_source=generated"
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
    matched: list[Path] = []
    missing: list[str] = []
    for hr_path in hr_paths:
        candidates = (lr_dir / hr_path.name, lr_dir / _div2k_lr_name(hr_path, scale))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(hr_path.name)
        else:
            matched.append(found)
    if missing:
        raise ImageFolderError(
            f"{len(missing)} of {len(hr_paths)} HR image(s) of {hr_paths[0].parent} have no LR file in {lr_dir} "
            f"(<name> or <stem>x{scale}<suffix>): {', '.join(missing)}; add them, or leave the LR folder unset "
            "to generate LR from the HR images"
        )
    return matched


class PairSource(Protocol):
    """Where training pairs come from: `load(i) -> (lr uint8 (3, h, w) or None, hr uint8 (3, H, W), name)`.

    `lr` is None when LR must be generated from the HR crop. Implementations are small and picklable, so that
    DataLoader workers get their own copy.
    """

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]: ...


def too_small(size: tuple[int, int], crop: int) -> bool:
    """Whether a `(width, height)` image cannot give a `crop` x `crop` window."""
    return min(size) < crop


def _too_small_reason(path: Path, size: tuple[int, int], crop: int) -> str:
    return (
        f"{path}: {size[0]}x{size[1]}, smaller than the {crop}x{crop} training crop (lower hr_patch_size or "
        "remove the file)"
    )


def usable_images(
    paths: Sequence[Path], min_sizes: Sequence[int], max_unreadable: int, where: str
) -> tuple[list[int], list[str]]:
    """Indices of `paths` that `probe_image` can open and that hold the crop (`min_sizes[i]` pixels a side), and
    `"<path>: <reason>"` for each one skipped (each logged once the run is known to go on: a refusal is the one
    line of `check_skipped`).

    Raises `ImageFolderError` when more than `max_unreadable` are skipped, or all of them: a damaged copy of a
    data set (or a crop larger than its photos) should stop the run before it starts, a few bad files among
    thousands should not.
    """
    usable: list[int] = []
    skipped: list[str] = []
    for index, (path, min_size) in enumerate(zip(paths, min_sizes, strict=True)):
        try:
            size = probe_image(path)
        except ImageReadError as error:
            reason = str(error)
        else:
            if not too_small(size, min_size):
                usable.append(index)
                continue
            reason = _too_small_reason(path, size, min_size)
        skipped.append(reason)
    check_skipped(skipped, len(paths), max_unreadable, where)
    for reason in skipped:
        log.warning("skipped training image %s", reason)
    return usable, skipped


def check_skipped(skipped: Sequence[str], total: int, max_unreadable: int, where: str) -> None:
    """Stop (one line) when more than `max_unreadable` of `total` training images are skipped (unreadable or
    smaller than the crop), or all of them."""
    if len(skipped) > max_unreadable or (skipped and len(skipped) == total):
        raise ImageFolderError(
            f"{len(skipped)} of {total} training images in {where} cannot be used (limit "
            f"data.train_source.max_unreadable={max_unreadable}), first: {skipped[0]}; repair or remove "
            "them, or raise data.train_source.max_unreadable"
        )


class FolderPairs:
    """HR images of a folder, with LR images of the same name from `lr_dir`, or None (generate LR).

    Checked when built, from the file headers: files that cannot be opened, and images smaller than the training
    crop (`min_size` HR pixels a side, `min_size / scale` for LR files), are skipped with a warning and listed in
    `unreadable` (the run record keeps them); more than `max_unreadable` stop the run (`check_skipped`). A file
    that opens but fails to decode later (truncated after its header) is skipped when it is drawn: its neighbour
    is used instead.
    """

    def __init__(
        self,
        hr_dir: str | os.PathLike,
        lr_dir: str | os.PathLike | None,
        scale: int,
        max_unreadable: int = 0,
        min_size: int = 0,
    ) -> None:
        self.hr_dir = Path(hr_dir)
        self.max_unreadable = int(max_unreadable)
        hr_paths = list_images(
            hr_dir,
            what="training HR",
            hint="; prepare DIV2K with `python -m dgggan_pl.prepare` (docs/data.md) or set data.train_source.hr_dir",
        )
        lr_paths = None if lr_dir is None else match_lr_files(hr_paths, Path(lr_dir), scale)
        min_sizes = [int(min_size)] * len(hr_paths) + [-(-int(min_size) // int(scale))] * len(lr_paths or [])
        keep, self.unreadable = usable_images(
            [*hr_paths, *(lr_paths or [])], min_sizes, self.max_unreadable, str(hr_dir)
        )
        kept = set(keep)
        pairs = [
            i for i in range(len(hr_paths)) if i in kept and (lr_paths is None or i + len(hr_paths) in kept)
        ]
        if not pairs:
            check_skipped(self.unreadable, len(self.unreadable), self.max_unreadable, str(hr_dir))
        self.hr_paths = [hr_paths[i] for i in pairs]
        self.lr_paths = None if lr_paths is None else [lr_paths[i] for i in pairs]

    def __len__(self) -> int:
        return len(self.hr_paths)

    def _read(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        hr = read_image(self.hr_paths[index])
        lr = None if self.lr_paths is None else read_image(self.lr_paths[index])
        return lr, hr, str(self.hr_paths[index])

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        for offset in range(len(self)):
            try:
                return self._read((index + offset) % len(self))
            except ImageReadError as error:
                if str(error) not in self.unreadable:
                    log.warning("skipped training image %s", error)
                    self.unreadable.append(str(error))
                check_skipped(
                    self.unreadable, len(self) + len(self.unreadable), self.max_unreadable, str(self.hr_dir)
                )
        raise ImageFolderError(f"no training image of {self.hr_dir} can be read; repair or replace them")


class InMemoryFolders:
    """HR images of several folders, decoded once and held in memory; LR is always generated (None).

    For training on a few hundred whole images (e.g. BSD100 + Urban100 HR for a CPU learning check), where
    decoding a large PNG for every 48-pixel crop would cost more than the training step. Unreadable files and
    images smaller than the crop (`min_size`) are skipped and listed in `unreadable`, as in `FolderPairs`.
    """

    def __init__(
        self, hr_dirs: Sequence[str | os.PathLike], max_unreadable: int = 0, min_size: int = 0
    ) -> None:
        if not hr_dirs:
            raise ImageFolderError(
                "InMemoryFolders needs at least one folder (config key data.train_source.hr_dirs)"
            )
        paths = [
            path
            for folder in hr_dirs
            for path in list_images(folder, what="training HR", hint="; set data.train_source.hr_dirs")
        ]
        self.hr_paths: list[Path] = []
        self.images: list[Tensor] = []
        self.unreadable: list[str] = []
        for path in paths:
            try:
                image = read_image(path)
            except ImageReadError as error:
                reason = str(error)
            else:
                size = (int(image.shape[-1]), int(image.shape[-2]))
                if not too_small(size, int(min_size)):
                    self.images.append(image)
                    self.hr_paths.append(path)
                    continue
                reason = _too_small_reason(path, size, int(min_size))
            log.warning("skipped training image %s", reason)
            self.unreadable.append(reason)
        check_skipped(self.unreadable, len(paths), int(max_unreadable), ", ".join(map(str, hr_dirs)))

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


def unreadable_training_files(datamodule: Any) -> list[str]:
    """`"<path>: <reason>"` of each training file skipped as unreadable or smaller than the crop (for
    run_info.json); [] when the training set was not built or its source does not skip files."""
    dataset = getattr(datamodule, "train_dataset", None)
    return list(getattr(getattr(dataset, "source", None), "unreadable", []))
