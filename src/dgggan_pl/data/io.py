"""Robust image reading and atomic writing.

Real folders hold grayscale, RGBA, palette and 16-bit files next to plain RGB ones (Set14 `bridge.png` is
mode L). Everything is read as uint8 RGB `(3, H, W)` so that models and metrics see one format.

EXIF orientation is ignored by default: MATLAB's `imread` (which made the benchmark LR files) ignores it, and
applying it to only one file of an HR/LR pair would silently misalign the pair. The first file read with an
orientation tag that says "rotate or flip" is named in a warning (once per process). `upscale` applies it
(`apply_orientation=True`), as image viewers do: its PNG output carries no tag, so the result looks like what the
user saw. GIF files are read as their first frame (a warning names animated ones).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from dgggan_pl.utils.atomic import atomic_open

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_EXIF_ORIENTATION = 0x0112  # EXIF tag; value 1 = upright, 2-8 = flipped and/or rotated
_UPRIGHT = 1
_UINT16_SHIFT = 8  # 16-bit -> 8-bit keeps the high byte, as Pillow itself does for 16-bit RGB PNGs
_UINT8_MAX = 255.0
# PIL modes holding 16-bit (or wider integer) samples, rescaled rather than clipped.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageReadError(OSError):
    """An image file is missing, unreadable, truncated or in an unsupported format (the message names it)."""


class ImageFolderError(FileNotFoundError):
    """A folder of images is missing, empty, or holds too many unreadable files (the message names it and the
    config key or option to change): the CLIs print it as one line."""


def _wide_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit grayscale -> uint8 high byte (PIL's convert('L') would clip at 255 instead), consistent with
    Pillow's decoding of 16-bit RGB PNGs, which also keeps the high byte."""
    values = np.asarray(image).astype(np.int64) >> _UINT16_SHIFT
    return np.clip(values, 0, int(_UINT8_MAX)).astype(np.uint8)


def _to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """Any supported PIL image -> `(H, W, 3)` uint8 RGB. Alpha is dropped (not composited)."""
    mode = image.mode
    if mode in _WIDE_INT_MODES:
        gray = _wide_to_uint8(image)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageReadError(
            f"{path}: floating-point images (PIL mode F) have no defined range; save it as 8/16-bit"
        )
    if mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette -> its true colours (the palette may carry transparency)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # RGBA/LA: alpha dropped; L/1/CMYK: converted


class _Warned:
    """What this process has already warned about (once each, not once per file)."""

    orientation = False
    animation = False


def _orient(image: Image.Image, path: Path, apply_orientation: bool) -> Image.Image:
    """Apply the EXIF orientation, or warn (once) that it is ignored; warn (once) about animated GIFs."""
    if getattr(image, "n_frames", 1) > 1 and not _Warned.animation:
        _Warned.animation = True
        log.warning("%s is animated: only its first frame is used (and so for other animated files)", path)
    orientation = image.getexif().get(_EXIF_ORIENTATION, _UPRIGHT)
    if orientation == _UPRIGHT:
        return image
    if apply_orientation:
        return ImageOps.exif_transpose(image)
    if not _Warned.orientation:
        _Warned.orientation = True
        log.warning(
            "%s has EXIF orientation %s (rotated/flipped in image viewers); it is read as stored, as MATLAB's "
            "imread does, and so are other such files: rotate them upright before training on them",
            path,
            orientation,
        )
    return image


def read_image(path: str | os.PathLike, *, apply_orientation: bool = False) -> Tensor:
    """Read an image file as uint8 RGB `(3, H, W)`.

    Grayscale is replicated to 3 channels, alpha dropped, palette expanded, 16-bit rescaled to 8-bit.
    EXIF orientation is ignored unless `apply_orientation` (see the module docstring).

    Raises:
        ImageReadError: naming the file, when it is missing, corrupt, truncated or of an unsupported mode.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not later in a worker
            array = _to_rgb_array(_orient(image, path, apply_orientation), path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(
            f"{path}: cannot read image ({type(error).__name__}: {error}); re-download or remove the file"
        ) from error
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def quantize_uint8(image: Tensor) -> Tensor:
    """Float in [0, 1] (any shape) -> uint8, rounded half up and clamped: how every image is written."""
    return torch.floor(image.detach().float() * _UINT8_MAX + 0.5).clamp_(0, _UINT8_MAX).to(torch.uint8)


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    """`(3, H, W)` uint8, or float in [0, 1] (rounded half up, clamped) -> `(H, W, 3)` uint8 numpy."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects (3, H, W) or (1, H, W), got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        if not image.is_floating_point():
            raise TypeError(f"save_image expects uint8 or float in [0, 1], got {image.dtype}")
        image = quantize_uint8(image)
    array = image.cpu().numpy().transpose(1, 2, 0)
    return array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array)


def save_image(image: Tensor, path: str | os.PathLike) -> None:
    """Write `(3, H, W)` uint8 or float in [0, 1] to `path` atomically (temp file in the same folder, then
    `os.replace`), so that an interrupted run never leaves a half-written image behind."""
    path = Path(path)
    array = _to_uint8_hwc(image)
    file_format = Image.registered_extensions().get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use one of {IMAGE_EXTENSIONS}")
    with atomic_open(path, "wb") as stream:
        Image.fromarray(array).save(stream, format=file_format)


def list_images(folder: str | os.PathLike, what: str = "image", hint: str = "") -> list[Path]:
    """Sorted image files of `folder`; `ImageFolderError` (ending with `hint`, e.g. the config key to set)
    when the folder is missing or holds no images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{what} folder not found: {folder}{hint}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ImageFolderError(
            f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}){hint}"
        )
    return files


def other_files(folder: str | os.PathLike) -> list[Path]:
    """The visible files of `folder` that `list_images` leaves out (not a supported image extension)."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS
    )


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """`(width, height)` of an image file as stored; `ImageReadError` when Pillow cannot open it. Reads the header
    only: cheap enough for every file of a training folder (a file truncated after its header fails later, in
    `read_image`)."""
    try:
        with Image.open(path) as image:
            return image.size  # parsed with the header
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def to_float(image: Tensor) -> Tensor:
    """uint8 `(..., H, W)` -> float32 in [0, 1]."""
    return image.to(torch.float32) / _UINT8_MAX
