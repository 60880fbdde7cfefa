"""`python -m dgggan_pl.prepare`: cut DIV2K-style HR (and LR) images into aligned training sub-images.

    python -m dgggan_pl.prepare --hr-dir DIV2K/DIV2K_train_HR \\
        --lr-dir DIV2K/DIV2K_train_LR_bicubic/X4 --out-dir DIV2K --workers 8 [--pack]

writes `<out-dir>/DIV2K_train_HR_sub/0001_s001.png ...` (480x480, step 240, threshold 48) and
`<out-dir>/DIV2K_train_LR_bicubic_X4_sub/` (120x120, step 60, threshold 12) with the same names, as SPSR's
preprocessing does (docs/design.md#div2k-sub-images). Without `--lr-dir` the LR images are generated from the mod-cropped HR with
MATLAB-compatible bicubic. `--pack` also writes one uint8 `.npy` array per folder (see `data/packed.py`).

Resumable: each finished source image gets a marker in `<out-dir>/.prepare_done/`; a rerun skips those. Every
file is written atomically, and the sub-images of an image that fails are removed, so the folders only hold
complete images (after a kill, the unmarked image in progress is redone, and the temp files of writes it
interrupted are removed; Ctrl+C or SIGTERM removes them on the way out and exits 130 / 143). Errors are
collected per image and reported together (exit status 1); a missing or empty HR folder, LR files missing
(all named) or changed settings stop it before any work (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dgggan_pl.data.datasets import generate_lr, match_lr_files
from dgggan_pl.data.io import ImageFolderError, list_images, read_image
from dgggan_pl.data.packed import pack_folder
from dgggan_pl.data.subimages import WindowSpec, extract, subimage_name, window_boxes
from dgggan_pl.data.transforms import check_pair_sizes, mod_crop
from dgggan_pl.utils.atomic import remove_stale_temp_files, write_json_atomic
from dgggan_pl.utils.exits import interruptible

# docs/design.md#div2k-sub-images (SPSR's DIV2K preprocessing): 480x480 HR sub-images, step 240, edge window if leftover > 48.
HR_CROP = 480
HR_STEP = 240
HR_THRESHOLD = 48
SCALE = 4  # x4 super-resolution (paper)
HR_SUBDIR = "DIV2K_train_HR_sub"
LR_SUBDIR = "DIV2K_train_LR_bicubic_X{scale}_sub"
DONE_DIR = ".prepare_done"
SETTINGS_FILE = "prepare_settings.json"
EXIT_FAILED_IMAGES = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Settings:
    """What determines the output; a rerun into the same folder must use the same settings."""

    scale: int
    crop: int
    step: int
    threshold: int
    lr_source: str  # "folder" or "generated"


@dataclass(frozen=True)
class Task:
    hr_path: Path
    lr_path: Path | None
    hr_out: Path
    lr_out: Path
    done_dir: Path
    settings: Settings


def _process(task: Task) -> tuple[str, int, str | None]:
    """Cut one source image; returns (stem, sub-image count, error message or None). Runs in a worker."""
    from dgggan_pl.data.io import save_image  # imported here: workers may be spawned

    stem = task.hr_path.stem
    written: list[Path] = []
    try:
        settings = task.settings
        hr = mod_crop(read_image(task.hr_path), settings.scale)
        if task.lr_path is None:
            lr = generate_lr(hr, settings.scale)
        else:
            lr = read_image(task.lr_path)
            check_pair_sizes(lr, hr, settings.scale, str(task.lr_path), str(task.hr_path))
        hr_spec = WindowSpec(settings.crop, settings.step, settings.threshold)
        boxes = window_boxes(hr.shape[-2], hr.shape[-1], hr_spec)
        if not boxes:
            raise ValueError(
                f"{task.hr_path}: image {hr.shape[-1]}x{hr.shape[-2]} is smaller than the {settings.crop}x{settings.crop} "
                "sub-image; remove it or lower --crop"
            )
        lr_boxes = [(top // settings.scale, left // settings.scale) for top, left in boxes]
        lr_crop = settings.crop // settings.scale
        for index, (hr_sub, lr_sub) in enumerate(
            zip(extract(hr, boxes, settings.crop), extract(lr, lr_boxes, lr_crop), strict=True)
        ):
            name = subimage_name(stem, index)
            for image, folder in ((hr_sub, task.hr_out), (lr_sub, task.lr_out)):
                written.append(folder / name)
                save_image(image, folder / name)
        write_json_atomic(task.done_dir / f"{stem}.json", {"source": str(task.hr_path), "count": len(boxes)})
        return stem, len(boxes), None
    except Exception as error:  # reported per image; the run goes on with the others
        for path in written:
            path.unlink(missing_ok=True)
        message = str(error) if str(task.hr_path) in str(error) else f"{task.hr_path}: {error}"
        return stem, 0, f"{type(error).__name__}: {message}"


def _init_worker() -> None:
    torch.set_num_threads(1)  # one image per process; avoid oversubscribing the cores
    # Ctrl+C reaches the whole process group: the parent alone handles it (and terminates the pool), so
    # the workers print no traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_settings(out_dir: Path, settings: Settings) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != asdict(settings):
            raise ImageFolderError(
                f"{out_dir} was prepared with other settings ({previous}); now {asdict(settings)}. "
                "Use another --out-dir or delete the old output."
            )
    else:
        write_json_atomic(path, asdict(settings))


def prepare(
    hr_dir: Path,
    out_dir: Path,
    lr_dir: Path | None = None,
    scale: int = SCALE,
    crop: int = HR_CROP,
    step: int = HR_STEP,
    threshold: int = HR_THRESHOLD,
    workers: int = 1,
    progress: bool = True,
) -> tuple[int, list[str]]:
    """Prepare all images; returns (total sub-images in the output, error messages)."""
    WindowSpec(crop, step, threshold).scaled_down(scale)  # validates divisibility before any work
    hr_paths = list_images(hr_dir, what="HR")
    lr_paths = match_lr_files(hr_paths, lr_dir, scale) if lr_dir is not None else [None] * len(hr_paths)
    settings = Settings(scale, crop, step, threshold, "folder" if lr_dir is not None else "generated")
    hr_out, lr_out, done_dir = (
        out_dir / HR_SUBDIR,
        out_dir / LR_SUBDIR.format(scale=scale),
        out_dir / DONE_DIR,
    )
    for folder in (hr_out, lr_out, done_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    try:
        return _run(hr_paths, lr_paths, settings, (hr_out, lr_out, done_dir), workers, progress)
    finally:  # pool workers terminated by Ctrl+C / SIGTERM stop mid-write: their temp files go here
        for folder in (hr_out, lr_out, done_dir):
            remove_stale_temp_files(folder)


def _run(
    hr_paths: list[Path],
    lr_paths: list[Path] | list[None],
    settings: Settings,
    folders: tuple[Path, Path, Path],
    workers: int,
    progress: bool,
) -> tuple[int, list[str]]:
    """Cut the images not marked done; returns (total sub-images in the output, error messages)."""
    hr_out, lr_out, done_dir = folders
    for folder in folders:  # left by a run killed outright (SIGKILL, power loss): no finished file matches
        remove_stale_temp_files(folder)
    tasks = [
        Task(hr, lr, hr_out, lr_out, done_dir, settings)
        for hr, lr in zip(hr_paths, lr_paths, strict=True)
        if not (done_dir / f"{hr.stem}.json").is_file()
    ]
    errors: list[str] = []
    bar = tqdm(total=len(tasks), desc="sub-images", unit="img", disable=not progress)
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context().Pool(workers, initializer=_init_worker) as pool:
            results = pool.imap_unordered(_process, tasks)
            for _, _, error in results:
                errors += [error] if error else []
                bar.update()
    else:
        for task in tasks:
            errors += [error] if (error := _process(task)[2]) else []
            bar.update()
    bar.close()
    total = sum(json.loads(p.read_text())["count"] for p in done_dir.glob("*.json"))
    return total, errors


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dgggan_pl.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--hr-dir", type=Path, required=True, help="folder of HR images (DIV2K_train_HR)")
    parser.add_argument(
        "--lr-dir", type=Path, default=None, help="LR folder (DIV2K_train_LR_bicubic/X4); omit to generate"
    )
    parser.add_argument(
        "--out-dir", type=Path, required=True, help=f"writes {HR_SUBDIR}/ and LR sub-images here"
    )
    parser.add_argument("--scale", type=int, default=SCALE)
    parser.add_argument("--crop", type=int, default=HR_CROP, help="HR sub-image size (LR: crop / scale)")
    parser.add_argument("--step", type=int, default=HR_STEP, help="HR stride")
    parser.add_argument(
        "--threshold", type=int, default=HR_THRESHOLD, help="edge window only if leftover > this"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--pack", action="store_true", help="also write one .npy array per folder (faster loading)"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


@interruptible("prepare", "rerun the same command to continue (finished images are skipped)")
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        total, errors = prepare(
            args.hr_dir,
            args.out_dir,
            args.lr_dir,
            args.scale,
            args.crop,
            args.step,
            args.threshold,
            args.workers,
            progress=not args.no_progress,
        )
    except (ImageFolderError, ValueError) as usage_error:
        print(f"error: {usage_error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{total} sub-images in {args.out_dir / HR_SUBDIR} (and LR x{args.scale})")
    if errors:
        print(
            f"{len(errors)} image(s) failed; fix them and rerun (finished images are skipped):",
            file=sys.stderr,
        )
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_FAILED_IMAGES
    if args.pack:
        for folder in (args.out_dir / HR_SUBDIR, args.out_dir / LR_SUBDIR.format(scale=args.scale)):
            print(f"packed {pack_folder(folder, workers=args.workers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
