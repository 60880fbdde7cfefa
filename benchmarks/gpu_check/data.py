"""The data folder that travels with the working tree to a lent GPU (`--prepare-data`, docs/gpu.md).

The device machine reaches nothing outside the tree it is sent, and the tree travels up to a fixed size, so the
folder holds: the evaluation sets whole (HR and shipped LR), single files (NIQE's model, the upscale input), and
a centre crop of every training HR image, at the largest crop size that keeps the tree inside its limit. It has
the layout of a data folder (`paths.data_dir`): `sr-benchmarks/<Set>/...`, plus `train-crops/<Set>/`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

MIB = 2**20
TRAIN_CROPS = "train-crops"


def tree_bytes(repo: Path, extra: Sequence[Path] = ()) -> int:
    """Bytes the device tool sends: tracked and untracked-not-ignored files of `repo`, plus `extra` folders."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    files = [repo / name for name in listing.decode().split("\0") if name]
    for folder in extra:
        files += [path for path in folder.rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files if path.is_file() and not path.is_symlink())


def _png_crop(path: Path, size: int) -> bytes:
    """The centre `size` x `size` crop of an image as PNG bytes (the whole image when it is smaller)."""
    with Image.open(path) as image:
        width, height = image.size
        left, top = max(0, (width - size) // 2), max(0, (height - size) // 2)
        crop = image.convert("RGB").crop((left, top, left + min(size, width), top + min(size, height)))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return buffer.getvalue()


def _hr_images(source: Path, names: Sequence[str], limit: int | None) -> list[Path]:
    images = []
    for name in names:
        folder = source / "sr-benchmarks" / name / "HR"
        found = sorted(folder.glob("*.png"))
        if not found:
            raise FileNotFoundError(f"{folder}: no HR images (the data folder needs sr-benchmarks/{name}/HR)")
        images += found[:limit]
    return images


def _copy_tree(source: Path, target: Path, limit: int | None) -> int:
    """Copy `source`'s files (the first `limit` of each folder) to `target`; returns the bytes copied."""
    copied = 0
    for folder in [source, *sorted(p for p in source.rglob("*") if p.is_dir())]:
        for path in sorted(p for p in folder.iterdir() if p.is_file())[:limit]:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            copied += path.stat().st_size
    return copied


def prepare_data(source: Path, target: Path, spec: Any, budget_bytes: int | None) -> dict[str, Any]:
    """Fill `target` from the data folder `source` as `spec` (conf/gpu_check.yaml `data`) says, within budget.

    Returns what was written: bytes, crop size, image counts. Refuses (ValueError) when even the smallest crop
    size does not fit, naming the budget.
    """
    if target.exists():
        shutil.rmtree(target)
    limit = spec.get("images_per_set")
    written = 0
    for name in spec.eval_sets:
        written += _copy_tree(source / "sr-benchmarks" / name, target / "sr-benchmarks" / name, limit)
    for relative in spec.files:
        path = source / relative
        if not path.is_file():  # NIQE's model is optional: NIQE is reported unavailable without it
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if spec.get("file_crop") and path.suffix.lower() == ".png":
            (target / relative).write_bytes(_png_crop(path, int(spec.file_crop)))
        else:
            shutil.copyfile(path, target / relative)
        written += (target / relative).stat().st_size
    images = _hr_images(source, list(spec.train_sets), limit)
    for size in sorted((int(s) for s in spec.crop_sizes), reverse=True):
        crops = {path: _png_crop(path, size) for path in images}
        total = written + sum(len(data) for data in crops.values())
        if budget_bytes is None or total <= budget_bytes:
            for path, data in crops.items():
                destination = target / TRAIN_CROPS / path.parents[1].name / path.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
            return {"bytes": total, "crop_size": size, "train_images": len(crops), "folder": str(target)}
    shutil.rmtree(target, ignore_errors=True)
    assert budget_bytes is not None  # without a budget the largest size always fits
    raise ValueError(
        f"--prepare-data: even {min(spec.crop_sizes)}-pixel crops of {len(images)} images exceed the "
        f"{budget_bytes / MIB:.1f} MiB left for data (conf/gpu_check.yaml data.device_tree_mib minus the tree, "
        "the wheels and data.margin_mib); lower data.images_per_set or data.crop_sizes"
    )


def training_dirs(data_dir: Path, spec: Any) -> list[Path]:
    """The training HR folders of a data folder: its crops when prepared, else the whole sets, else none."""
    for folders in (
        [data_dir / TRAIN_CROPS / name for name in spec.train_sets],
        [data_dir / "sr-benchmarks" / name / "HR" for name in spec.train_sets],
    ):
        if all(folder.is_dir() for folder in folders):
            return folders
    return []
