"""DGGGAN super-resolution in PyTorch Lightning + Hydra.

One import upscales an image (docs/inference.md):

    from dgggan_pl import DGGGANGenerator, read_image, save_image

    model = DGGGANGenerator.from_pretrained("model.safetensors").enable_tiling()
    save_image(model.upscale(read_image("photo.jpg")), "photo_x4.png")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use: `import dgggan_pl` (every entry point, the Hydra launcher plugins) stays free of torch.
_EXPORTS = {
    "DGGGANGenerator": "dgggan_pl.models.generator",
    "read_image": "dgggan_pl.data.io",
    "save_image": "dgggan_pl.data.io",
}
__all__ = ["DGGGANGenerator", "__version__", "read_image", "save_image"]

if TYPE_CHECKING:
    from dgggan_pl.data.io import read_image, save_image
    from dgggan_pl.models.generator import DGGGANGenerator


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
