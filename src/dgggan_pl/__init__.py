"""DGGGAN super-resolution in PyTorch Lightning + Hydra.

One import upscales an image with any generator, ours or a peer's (docs/inference.md):

    from dgggan_pl import SRModel, read_image, save_image

    model = SRModel.from_pretrained("model.safetensors").enable_tiling()
    save_image(model.upscale(read_image("photo.jpg")), "photo_x4.png")

Importing the package also registers our generators with spandrel (chaiNNer's and ComfyUI's loader), once
spandrel is imported, before or after this package: `dgggan_pl.spandrel_support`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use: `import dgggan_pl` (every entry point, the Hydra launcher plugins) stays free of torch.
_EXPORTS = {
    "SRModel": "dgggan_pl.sr_model",
    "DGGGANGenerator": "dgggan_pl.models.generator",
    "read_image": "dgggan_pl.data.io",
    "save_image": "dgggan_pl.data.io",
}
__all__ = ["DGGGANGenerator", "SRModel", "__version__", "read_image", "save_image"]

if TYPE_CHECKING:
    from dgggan_pl.data.io import read_image, save_image
    from dgggan_pl.models.generator import DGGGANGenerator
    from dgggan_pl.sr_model import SRModel

SPANDREL = "spandrel"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_with_spandrel() -> None:
    try:
        from dgggan_pl.spandrel_support import register

        register()
    except Exception as error:  # noqa: BLE001 - never break the caller's `import spandrel` over our extra
        warnings.warn(f"dgggan_pl could not register its generators with spandrel: {error}", stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """spandrel's own loader, followed by our registration once spandrel is fully imported."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register_with_spandrel()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)


class _SpandrelImportHook(importlib.abc.MetaPathFinder):
    """Waits for `import spandrel` (importing spandrel here would cost every entry point ~5 s and torch)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SPANDREL:
            return None
        sys.meta_path.remove(self)  # one registration; and the search below must not find this hook again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


if SPANDREL in sys.modules:
    _register_with_spandrel()
elif not any(isinstance(finder, _SpandrelImportHook) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SpandrelImportHook())
