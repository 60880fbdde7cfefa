"""Packed sub-images: one uint8 `(N, H, W, 3)` `.npy` array per folder, read by memory mapping.

Why: a training sample needs only a 192x192 window of a 480x480 sub-image, but a PNG must be decoded whole
(about 10 ms on one core), which caps a loader worker below the 150 samples/s an H100 step needs. A memory
mapped raw array reads just the window's rows (benchmarks/bench_loader.py measures both). The cost is disk:
about 22 GB for DIV2K's 32,208 HR sub-images (PNG: about 12 GB). LMDB would add a dependency for no gain here.

Layout: `<folder>.npy` and `<folder>.names.json` (the sub-image names, in array order) beside the folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgggan_pl.data.io import list_images, read_image

_CHUNK = 64  # images per worker task when packing


def packed_paths(folder: str | os.PathLike) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder.with_name(f"{folder.name}.npy"), folder.with_name(f"{folder.name}.names.json")


def _fill(job: tuple[Path, int, list[Path]]) -> None:
    """Worker: decode `paths` into rows `start...` of the (temporary) packed array."""
    array_path, start, paths = job
    array = np.lib.format.open_memmap(array_path, mode="r+")
    for offset, path in enumerate(paths):
        image = read_image(path).permute(1, 2, 0).numpy()
        if image.shape != array.shape[1:]:
            raise ValueError(
                f"{path}: size {image.shape} differs from the folder's first image {array.shape[1:]}"
            )
        array[start + offset] = image
    array.flush()


def pack_folder(folder: str | os.PathLike, workers: int = 1) -> Path:
    """Write `<folder>.npy` + `<folder>.names.json` atomically from the equally sized images of `folder`."""
    paths = list_images(folder, what="sub-image")
    array_path, names_path = packed_paths(folder)
    first = read_image(paths[0])
    shape = (len(paths), first.shape[1], first.shape[2], first.shape[0])
    tmp_array = array_path.with_name(f".{array_path.name}.tmp.npy")
    tmp_names = names_path.with_name(f".{names_path.name}.tmp")
    try:
        np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=shape).flush()
        jobs = [(tmp_array, start, paths[start : start + _CHUNK]) for start in range(0, len(paths), _CHUNK)]
        if workers > 1:
            with multiprocessing.get_context().Pool(workers) as pool:
                list(pool.imap_unordered(_fill, jobs))
        else:
            for job in jobs:
                _fill(job)
        tmp_names.write_text(json.dumps([p.name for p in paths]))
        os.replace(tmp_array, array_path)
        os.replace(tmp_names, names_path)
    finally:
        tmp_array.unlink(missing_ok=True)
        tmp_names.unlink(missing_ok=True)
    return array_path


class _PackedArray:
    """A lazily opened, memory-mapped packed array (opened per process: memmaps must not be pickled)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.array_path, names_path = packed_paths(folder)
        if not self.array_path.is_file() or not names_path.is_file():
            raise FileNotFoundError(
                f"packed sub-images not found: {self.array_path} / {names_path}; run "
                "`python -m dgggan_pl.prepare ... --pack` or use the PNG folders (data=div2k)"
            )
        self.names: list[str] = json.loads(names_path.read_text())
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.names)

    def image(self, index: int) -> Tensor:
        """uint8 `(3, H, W)` view; only the rows later cropped are read from disk."""
        if self._array is None:
            self._array = np.load(
                self.array_path, mmap_mode="c"
            )  # copy-on-write: writable views, file untouched
            if len(self._array) != len(self.names):
                raise ValueError(
                    f"{self.array_path} holds {len(self._array)} images but its names file {len(self.names)}"
                )
        return torch.from_numpy(self._array[index]).permute(2, 0, 1)


class PackedPairs:
    """A `PairSource` over packed HR (and LR) sub-image folders; `lr_dir=None` generates LR on the fly."""

    def __init__(self, hr_dir: str | os.PathLike, lr_dir: str | os.PathLike | None, scale: int) -> None:
        self.hr = _PackedArray(hr_dir)
        self.lr = None if lr_dir is None else _PackedArray(lr_dir)
        if self.lr is not None and self.lr.names != self.hr.names:
            raise ValueError(
                f"{self.lr.array_path} and {self.hr.array_path} hold different sub-images; re-pack both"
            )
        self.scale = scale

    def __len__(self) -> int:
        return len(self.hr)

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        lr = None if self.lr is None else self.lr.image(index)
        return lr, self.hr.image(index), str(self.hr.folder / self.hr.names[index])  # the source PNG's path
