"""The upscale CLI: folders and files, corrupt inputs, no overwriting, atomic outputs, clear usage errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgggan_pl.data.io import read_image, to_float
from dgggan_pl.upscale import main
from dgggan_pl.weights import load_generator

HEIGHT, WIDTH = 10, 13


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder with an RGB PNG, a grayscale JPEG, an RGBA WebP and a corrupt PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)).save(
        folder / "alpha.webp", lossless=True
    )
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def test_folder_with_a_corrupt_file(tiny_generator_checkpoint, inputs: Path, tmp_path: Path, capsys) -> None:
    weights = tiny_generator_checkpoint()
    out = tmp_path / "out"
    status = main([str(inputs), str(out), "--weights", str(weights), "--tile", "4", "--device", "cpu"])
    assert status == 1
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "gray.png", "rgb.png"]  # no temp files left

    generator, _ = load_generator(weights)
    for name in ("rgb", "gray", "alpha"):
        source = next(inputs.glob(f"{name}.*"))
        with torch.no_grad():
            expected = generator(to_float(read_image(source)).unsqueeze(0)).sr[0].clamp(0, 1)
        written = to_float(read_image(out / f"{name}.png"))
        assert written.shape == (3, 4 * HEIGHT, 4 * WIDTH)
        assert (written - expected).abs().max() <= 1 / 255 + 1e-6  # tiled + 8-bit rounding


def test_file_to_file_and_no_overwrite(
    tiny_generator_checkpoint, inputs: Path, tmp_path: Path, capsys
) -> None:
    weights = tiny_generator_checkpoint()
    target = tmp_path / "result.png"
    args = [str(inputs / "rgb.png"), str(target), "--weights", str(weights), "--tile", "0"]
    assert main(args) == 0
    assert read_image(target).shape == (3, 4 * HEIGHT, 4 * WIDTH)

    target.write_bytes(b"keep me")
    assert main(args) == 0
    assert target.read_bytes() == b"keep me"
    assert "use --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert read_image(target).shape == (3, 4 * HEIGHT, 4 * WIDTH)


def test_usage_errors(tiny_generator_checkpoint, inputs: Path, tmp_path: Path, capsys) -> None:
    weights = tiny_generator_checkpoint()
    with pytest.raises(SystemExit) as exit_info:
        main([str(inputs), str(tmp_path / "o"), "--weights", str(weights), "--device", "cpu", "--half"])
    assert exit_info.value.code == 2
    assert "--half bf16 runs on a GPU only" in capsys.readouterr().err

    assert main([str(inputs), str(tmp_path / "o"), "--weights", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt: weights file not found" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--tile-overlap" in capsys.readouterr().out
