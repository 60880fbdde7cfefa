"""The embedded sample set: natural colour photos that ship inside scikit-image's wheel (no download).

It lets `make demo` train and validate on a fresh machine. Only images stored in the wheel itself are listed;
scikit-image's other images (lily, kidney, skin, ...) need `pooch` and a network, so they are not offered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import skimage.data
import torch
from torch import Tensor


def _motorcycle() -> np.ndarray:
    return skimage.data.stereo_motorcycle()[0]  # the left view; there is no `skimage.data.motorcycle_left`


SAMPLE_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "immunohistochemistry": skimage.data.immunohistochemistry,
    "motorcycle": _motorcycle,
    "retina": skimage.data.retina,
    "rocket": skimage.data.rocket,
}


def load_sample_image(name: str) -> Tensor:
    """One embedded image as uint8 RGB `(3, H, W)`."""
    if name not in SAMPLE_LOADERS:
        raise KeyError(
            f"unknown sample image {name!r} (config key data.*_images); choose from {sorted(SAMPLE_LOADERS)}"
        )
    array = np.asarray(SAMPLE_LOADERS[name](), dtype=np.uint8)[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class SampleImages:
    """A `PairSource` over embedded images, held in memory; LR is always generated (returns None)."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("SampleImages needs at least one image name (config key data.*_images)")
        self.names = list(names)
        self.images = [load_sample_image(name) for name in self.names]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor | None, Tensor, str]:
        return None, self.images[index], self.names[index]
