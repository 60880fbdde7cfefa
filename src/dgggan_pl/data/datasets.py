"""Map-style datasets: whole benchmark images (val/test) and random aligned training crops.

Items are dicts `{"lr": (3, h, w), "hr": (3, s*h, s*w), "name": str}`, float32 in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from torch import Tensor
from torch.utils.data import Dataset

from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import list_images, read_image, to_float
from dgggan_pl.data.transforms import check_pair_sizes, mod_crop

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
