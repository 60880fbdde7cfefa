"""Pixel-aligned crops and the 8 dihedral augmentations for LR/HR pairs.

Alignment rule: an LR pixel (i, j) covers HR pixels [s*i, s*i + s) x [s*j, s*j + s) for scale s, so an LR crop at
(top, left) pairs with the HR crop at (s*top, s*left), and any flip/rotation applied to both keeps them aligned.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NUM_DIHEDRAL = 8  # identity, 3 rotations, and each of them flipped


def mod_crop(image: Tensor, scale: int) -> Tensor:
    """Crop `(..., H, W)` at the bottom/right so that H and W are multiples of `scale` (the benchmarks' rule)."""
    height, width = image.shape[-2:]
    return image[..., : height - height % scale, : width - width % scale]


def check_pair_sizes(lr: Tensor, hr: Tensor, scale: int, lr_name: str, hr_name: str) -> None:
    """Raise a ValueError naming both files when `hr` is not exactly `scale` times `lr`."""
    lr_h, lr_w = lr.shape[-2:]
    hr_h, hr_w = hr.shape[-2:]
    if (hr_h, hr_w) != (lr_h * scale, lr_w * scale):
        raise ValueError(
            f"HR/LR size mismatch for scale {scale}: {hr_name} is {hr_w}x{hr_h} (WxH) but {lr_name} is "
            f"{lr_w}x{lr_h}, expected {hr_w // scale}x{hr_h // scale}; check the scale and that the pair belongs together"
        )


def _check_crop_fits(height: int, width: int, size: int, what: str, name: str) -> None:
    if height < size or width < size:
        raise ValueError(
            f"{name}: {what} image {width}x{height} is smaller than the crop {size}x{size}; remove the image "
            "or lower the top-level config key `hr_patch_size`"
        )


def random_crop(image: Tensor, size: int, generator: torch.Generator, name: str = "image") -> Tensor:
    """A random `(C, size, size)` window of `(C, H, W)` (HR crops whose LR is generated afterwards)."""
    height, width = image.shape[-2:]
    _check_crop_fits(height, width, size, "HR", name)
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return image[..., top : top + size, left : left + size]


def random_aligned_crop(
    lr: Tensor, hr: Tensor, lr_patch: int, scale: int, generator: torch.Generator, name: str = "image"
) -> tuple[Tensor, Tensor]:
    """Random aligned crops: `(C, h, w)`, `(C, s*h, s*w)` -> `(C, p, p)`, `(C, s*p, s*p)` with p = `lr_patch`."""
    lr_h, lr_w = lr.shape[-2:]
    _check_crop_fits(lr_h, lr_w, lr_patch, "LR", name)
    top = int(torch.randint(0, lr_h - lr_patch + 1, (1,), generator=generator))
    left = int(torch.randint(0, lr_w - lr_patch + 1, (1,), generator=generator))
    hr_patch = lr_patch * scale
    lr_crop = lr[..., top : top + lr_patch, left : left + lr_patch]
    hr_crop = hr[..., top * scale : top * scale + hr_patch, left * scale : left * scale + hr_patch]
    return lr_crop, hr_crop


def dihedral(image: Tensor, index: int) -> Tensor:
    """One of the 8 flips/90-degree rotations of `(..., H, W)`: `index` = 4 * flip + number of rotations."""
    if not 0 <= index < _NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in [0, {_NUM_DIHEDRAL}), got {index}")
    if index >= _NUM_DIHEDRAL // 2:
        image = image.flip(-1)
    return torch.rot90(image, k=index % 4, dims=(-2, -1))


def random_dihedral_index(generator: torch.Generator, hflip: bool = True, rotate: bool = True) -> int:
    """Draw a `dihedral` index. With `hflip` and `rotate` (the default) all 8 transforms are equally likely,
    which is exactly "random horizontal flip, vertical flip and 90-degree rotation" (ESRGAN/SPSR's augment)."""
    choices = [0, 1, 2, 3] if rotate else [0]
    if hflip:
        choices = choices + [c + _NUM_DIHEDRAL // 2 for c in choices]
    return choices[int(torch.randint(0, len(choices), (1,), generator=generator))]
