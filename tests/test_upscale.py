"""The upscale CLI: folders and files, corrupt inputs, no overwriting, atomic outputs, clear usage errors,
memory checked before an input starts, allocation failures per file, the global skip, channels_last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgggan_pl import SRModel, upscale
from dgggan_pl.data.io import read_image, to_float
from dgggan_pl.upscale import GIB, available_memory, main, memory_needed
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
    printed = capsys.readouterr()
    assert "broken.png" in printed.err
    assert sorted(line for line in printed.out.splitlines() if line.startswith("wrote")) == [
        f"wrote {out / name}" for name in ("alpha.png", "gray.png", "rgb.png")
    ]
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


def _write_rgb(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_an_input_too_large_for_memory_is_refused_before_it_starts(
    tiny_generator_checkpoint, tmp_path: Path, capsys, monkeypatch
) -> None:
    weights = tiny_generator_checkpoint()
    folder = tmp_path / "in"
    folder.mkdir()
    _write_rgb(folder / "big.png", 48, 64)
    _write_rgb(folder / "small.png", HEIGHT, WIDTH)
    model = SRModel.from_pretrained(weights).enable_tiling(4)
    small, big = (memory_needed(model, h, w).host for h, w in ((HEIGHT, WIDTH), (48, 64)))
    assert small < big
    started: list[tuple[int, ...]] = []
    real = upscale.upscale_image
    monkeypatch.setattr(
        upscale, "upscale_image", lambda g, image, **kw: started.append(image.shape) or real(g, image, **kw)
    )

    out = tmp_path / "out"
    limit = (small + big) / 2 / GIB
    args = [str(folder), str(out), "--weights", str(weights), "--tile", "4", "--max-memory", f"{limit:.9f}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "FAILED" in line)
    assert (
        "big.png: 64x48 -> 256x192 needs about" in line and "--max-memory" in line and "smaller input" in line
    )
    assert started == [(3, HEIGHT, WIDTH)]  # the big one never started
    assert sorted(p.name for p in out.iterdir()) == ["small.png"]
    assert main([*args[:-2], "--max-memory", "0"]) == 0  # 0: no check
    assert sorted(p.name for p in out.iterdir()) == ["big.png", "small.png"]


def test_allocation_failures_are_per_file_errors(
    tiny_generator_checkpoint, inputs: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    weights = tiny_generator_checkpoint()
    real = upscale.upscale_image
    allocator = (
        "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to ..."
    )

    def fail_on_gray(generator, image, **kwargs):
        if image.shape == (3, HEIGHT, WIDTH) and bool((image[0] == image[1]).all()):
            raise RuntimeError(allocator)
        return real(generator, image, **kwargs)

    monkeypatch.setattr(upscale, "upscale_image", fail_on_gray)
    out = tmp_path / "out"
    assert main([str(inputs), str(out), "--weights", str(weights), "--tile", "4"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "gray.jpg: out of memory (" in err and "DefaultCPUAllocator" in err
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "rgb.png"]

    monkeypatch.setattr(
        upscale, "upscale_image", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug"))
    )
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not swallowed
        main([str(inputs), str(tmp_path / "again"), "--weights", str(weights)])


def test_available_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory(meminfo) == 8_000_000 * 1024
    assert available_memory(tmp_path / "missing") is None


@pytest.mark.parametrize("channels_last", ["--channels-last", "--no-channels-last"])
def test_global_skip_and_memory_format_through_the_tiled_upscaler(
    tiny_generator_checkpoint, inputs: Path, tmp_path: Path, channels_last: str
) -> None:
    weights = tiny_generator_checkpoint(global_skip="bicubic", init_scale=1.0)
    target = tmp_path / "rgb_x4.png"
    assert (
        main([str(inputs / "rgb.png"), str(target), "--weights", str(weights), "--tile", "4", channels_last])
        == 0
    )
    generator, _ = load_generator(weights)
    assert generator.global_skip == "bicubic"
    with torch.no_grad():
        expected = generator(to_float(read_image(inputs / "rgb.png")).unsqueeze(0)).sr[0].clamp(0, 1)
    assert (to_float(read_image(target)) - expected).abs().max() <= 1 / 255 + 1e-6


def test_nan_weights_are_one_line_before_any_work(
    tiny_generator_checkpoint, inputs: Path, tmp_path: Path, capsys
) -> None:
    weights = tiny_generator_checkpoint()
    checkpoint = torch.load(weights, weights_only=True)
    checkpoint["state_dict"]["generator.image_branch.head.weight"].fill_(float("nan"))  # the whole first conv
    torch.save(checkpoint, weights)
    out = tmp_path / "out"
    assert main([str(inputs / "rgb.png"), str(out), "--weights", str(weights), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"error: {weights}: tensor image_branch.head.weight holds NaN/Inf (216 of 216 values; 1 tensor(s) in all: "
        "['image_branch.head.weight']); the weights are unusable, use an earlier checkpoint\n"
    )
    assert not out.exists()
