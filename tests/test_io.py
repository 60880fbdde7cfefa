"""Image reading: every mode real folders contain becomes uint8 RGB; bad files get errors naming them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgggan_pl.data import io as image_io
from dgggan_pl.data.io import ImageReadError, list_images, read_image, save_image

RNG = np.random.default_rng(0)


def _rgb(height: int = 6, width: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_rgb_roundtrip(tmp_path: Path) -> None:
    array = _rgb()
    Image.fromarray(array).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 5)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), array)


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (4, 7), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 4, 7)
    for channel in image:
        assert np.array_equal(channel.numpy(), gray)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.zeros((6, 5, 1), np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png").permute(1, 2, 0).numpy(), rgba[:, :, :3])


def test_palette_expanded(tmp_path: Path) -> None:
    array = _rgb()
    Image.fromarray(array).quantize(colors=16).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as pal:
        assert pal.mode == "P"
        expected = np.asarray(pal.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "p.png").permute(1, 2, 0).numpy(), expected)


def test_16bit_gray_and_rgb_keep_high_byte(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, (5, 4)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    gray = read_image(tmp_path / "g16.png")
    assert gray.shape == (3, 5, 4)
    assert np.array_equal(gray[0].numpy(), (values >> 8).astype(np.uint8))

    rgb16 = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    _write_png16_rgb(tmp_path / "c16.png", rgb16)
    color = read_image(tmp_path / "c16.png")
    assert np.array_equal(color.permute(1, 2, 0).numpy(), (rgb16 >> 8).astype(np.uint8))


def test_exif_orientation_ignored(tmp_path: Path) -> None:
    """A JPEG tagged 'rotate 90' keeps its stored (unrotated) size, as MATLAB's imread does."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    Image.fromarray(_rgb(8, 16)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").shape == (3, 8, 16)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_corrupt_file_named(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_truncated_file_named(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_save_float_rounds_and_uint8_roundtrip(tmp_path: Path) -> None:
    image = torch.tensor([[[0.0, 0.5 / 255, 1.49 / 255, 1.2]]]).expand(3, 1, 4).contiguous()
    save_image(image, tmp_path / "f.png")
    assert read_image(tmp_path / "f.png")[0, 0].tolist() == [0, 1, 1, 255]
    data = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    save_image(data, tmp_path / "sub" / "u.png")
    assert torch.equal(read_image(tmp_path / "sub" / "u.png"), data)


def test_save_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error mid-write removes the temp file and never creates the target."""

    def broken_save(self: Image.Image, fp, format=None, **params) -> None:  # noqa: A002
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(image_io.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path / "empty")
