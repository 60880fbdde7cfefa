"""`python -m dgggan_pl.upscale IN OUT --weights W`: x4 super-resolution of image files, tile by tile.

IN is an image file or a folder of images (PNG, JPEG, BMP, TIFF, WebP, GIF's first frame; grayscale/RGBA/
16-bit/palette are read as RGB, EXIF orientation is applied, see `dgggan_pl.data.io`; other files of the folder
are listed as skipped); OUT is a file (when IN is a file and OUT has an image extension) or a folder, where each
result is written as `<input stem>.png`. An output that is an input, or an output folder that is (or is
inside) the input folder, is refused before any work: --overwrite never touches an input. Outputs are written
atomically and existing ones are kept unless --overwrite; each written one is reported ("wrote PATH"); temp
files a killed run left for these outputs are removed. Tiles are rounded straight into the uint8 output, and
the memory an input needs is estimated before it starts: an input that cannot fit is refused with what it
needs and what to change. An unreadable input, one that does not fit, or an allocation failure is reported and
skipped; the exit status is 1 when any input failed, 2 on a usage error, 130 / 143 when stopped by Ctrl+C /
SIGTERM. See docs/inference.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from dgggan_pl.data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    other_files,
    read_image,
    save_image,
)
from dgggan_pl.sr_model import SRModel
from dgggan_pl.tiling import DEFAULT_TILE, plan_tiling
from dgggan_pl.utils.atomic import remove_stale_temp_files, unwritable_reason
from dgggan_pl.utils.exits import interruptible
from dgggan_pl.weights import WeightsError

OUTPUT_SUFFIX = ".png"  # lossless, whatever the input format
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXIT_FAILED_INPUTS = 1
EXIT_USAGE = 2
GIB = 1024**3
PILLOW_BYTES_PER_PIXEL = 4  # Pillow stores an RGB image as RGBX: the PNG writer's copy of the output
MEMINFO = Path("/proc/meminfo")
# Messages of allocation failures that are not MemoryError (torch's CPU allocator raises RuntimeError).
ALLOCATION_FAILURES = ("can't allocate memory", "out of memory")


class InsufficientMemoryError(MemoryError):
    """An input would need more memory than is available (the message says how much and what to change)."""


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dgggan_pl.upscale",
        description="x4 super-resolution of an image file or a folder of images with a DGGGAN generator.",
        epilog="Exit status: 0 all done, 1 some inputs failed (reported, the others were written), 2 usage error, "
        "130 / 143 stopped by Ctrl+C / SIGTERM (rerun to continue: finished outputs are kept).",
    )
    parser.add_argument(
        "input", type=Path, help=f"image file or folder of images ({', '.join(IMAGE_EXTENSIONS)})"
    )
    parser.add_argument(
        "output",
        type=Path,
        help="output file (if INPUT is a file and OUTPUT ends in an image extension) or folder "
        f"(created; results named <input stem>{OUTPUT_SUFFIX})",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        required=True,
        help="generator weights: a training .ckpt, an exported .safetensors or a save_pretrained folder; or a peer "
        "model's released .pth/.safetensors (ESRGAN, RCAN, SwinIR, ... via spandrel, extra `peers`; run on the "
        "whole image)",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help="LR pixels per tile (bounds memory; the output is the same as untiled); 0 = whole image at once "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="LR pixels of context around each tile; default: the generator's measured receptive radius "
        "(DGGGAN's HR stage: 2), the smallest seam-free value",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available"
    )
    parser.add_argument(
        "--half",
        nargs="?",
        const="bf16",
        choices=tuple(HALF_DTYPES),
        default=None,
        help="GPU only: autocast to bf16 (default when given without a value) or fp16",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the EMA generator (--ema) or the raw one (--no-ema); default: EMA when the weights have it",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the convolutions in channels_last memory format (faster on the CPU, see docs/inference.md; "
        "same result to float rounding)",
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="refuse inputs whose estimated memory exceeds this many GiB; default: MemAvailable of "
        "/proc/meminfo (no check where it cannot be read); 0 = no check",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available; 'cuda' without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def plan_jobs(source: Path, target: Path) -> list[Job]:
    """Pair each input image with its output path; refuses name clashes (a.jpg and a.png -> a.png)."""
    if source.is_file():
        if target.suffix.lower() in IMAGE_EXTENSIONS:
            return [Job(source, target)]
        return [Job(source, target / f"{source.stem}{OUTPUT_SUFFIX}")]
    if target.suffix.lower() in IMAGE_EXTENSIONS and not target.is_dir():
        raise ValueError(f"{source} is a folder, so the output {target} must be a folder, not an image file")
    _check_output_outside(source, target)
    jobs = [Job(path, target / f"{path.stem}{OUTPUT_SUFFIX}") for path in list_images(source, "input")]
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target in seen:
            raise ValueError(
                f"{seen[job.target]} and {job.source} would both be written to {job.target}; rename one"
            )
        seen[job.target] = job.source
    return jobs


def _check_output_outside(source: Path, target: Path) -> None:
    """Refuse an output folder that is, or is inside, the input folder: a rerun would upscale the results."""
    inside = target.resolve() == source.resolve() or source.resolve() in target.resolve().parents
    if inside:
        where = "is" if target.resolve() == source.resolve() else "is inside"
        raise ValueError(
            f"the output folder {target} {where} the input folder {source}: results would mix with the inputs "
            "(and be upscaled again by a rerun); choose an output folder outside it"
        )


def _file_identities(path: Path) -> list[object]:
    """What makes two paths the same file: the resolved path and, for an existing file, (device, inode)."""
    identities: list[object] = [path.resolve()]
    if path.exists():
        status = path.stat()
        identities.append((status.st_dev, status.st_ino))
    return identities


def check_inputs_kept(jobs: Sequence[Job]) -> None:
    """Refuse, before any work, an output path that is an input file (even with --overwrite).

    Each input's identities are collected once, so a folder of N images costs N look-ups, not N x N.
    """
    inputs = {identity: job.source for job in jobs for identity in _file_identities(job.source)}
    for job in jobs:
        clash = next((inputs[i] for i in _file_identities(job.target) if i in inputs), None)
        if clash is not None:
            raise ValueError(
                f"the output {job.target} is the input {clash}: writing it would destroy the input; "
                "choose another output file or folder"
            )


def upscale_image(
    model: SRModel, image: Tensor, *, half: torch.dtype | None, tile_bar: tqdm | None = None
) -> Tensor:
    """uint8 `(3, h, w)` -> uint8 `(3, 4h, 4w)` on the CPU, rounded as `save_image` rounds.

    Tiled, each tile is rounded into the output as it is computed (no float HR image is held).
    """
    device = _device(model)
    autocast = torch.autocast(device.type, dtype=half) if half is not None else contextlib.nullcontext()

    def progress(done: int, total: int) -> None:
        if tile_bar is not None:
            tile_bar.total = total
            tile_bar.n = done
            tile_bar.refresh()

    with autocast, torch.inference_mode():
        return model.upscale(image, progress=progress)


def _device(model: SRModel) -> torch.device:
    return next(model.parameters()).device


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable in bytes (what can be allocated without swapping), None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryNeed(NamedTuple):
    """CPU bytes one input needs at its peak (beyond the loaded model), its parts, and GPU bytes per tile."""

    host: int
    parts: str
    tile_on_host: int
    gpu: int


def memory_needed(model: SRModel, height: int, width: int) -> MemoryNeed:
    """The LR maps, the uint8 output and Pillow's copy of it while the PNG is written, plus the tile working set
    where tiles run (`SRModel.estimate_memory`: the generator's own estimate where it brings one)."""
    estimate = model.estimate_memory(height, width)
    on_gpu = _device(model).type == "cuda"
    tile_on_host = 0 if on_gpu else estimate.tile
    writing = estimate.output + estimate.output // model.in_channels * PILLOW_BYTES_PER_PIXEL
    host = max(estimate.lr_stage + tile_on_host, estimate.hr_stage + estimate.output + tile_on_host, writing)
    parts = (
        f"LR feature maps {estimate.lr_stage / GIB:.2f}, output {estimate.output / GIB:.2f} + "
        f"{(writing - estimate.output) / GIB:.2f} to write it, tile {estimate.tile / GIB:.2f}"
    )
    return MemoryNeed(host, parts, tile_on_host, estimate.tile + estimate.gate_map if on_gpu else 0)


def tileable(model: SRModel) -> bool:
    """Whether tiles bound this model's memory (False for generators that run on the whole image only)."""
    return plan_tiling(model.generator, model.tile or DEFAULT_TILE, model.tile_overlap).mode != "whole"


def check_memory(model: SRModel, image: Tensor, *, limit: int | None) -> None:
    """Raise `InsufficientMemoryError` (one line: need, limit, what to change) before a too-large input starts."""
    height, width = image.shape[-2:]
    need = memory_needed(model, height, width)
    size = f"{width}x{height} -> {model.scale * width}x{model.scale * height}"
    if limit is not None and need.host > limit:
        advice = "a smaller input (maps and output grow with its area)"
        if need.tile_on_host > need.host / 4 and tileable(model):
            smaller_tile = f"--tile {DEFAULT_TILE}" if model.tile == 0 else "a smaller --tile"
            advice = f"{smaller_tile}, --device cuda, or {advice}"
        raise InsufficientMemoryError(
            f"{size} needs about {need.host / GIB:.2f} GiB of memory ({need.parts}) but {limit / GIB:.2f} GiB "
            f"is available; use {advice}, or --max-memory to change the limit"
        )
    if need.gpu:
        free = torch.cuda.mem_get_info(_device(model))[0]
        if need.gpu > free:
            tiled = model.tiling_plan().mode != "whole"
            what = "one tile and one SE gate's map need" if tiled else "the whole-image forward needs"
            raise InsufficientMemoryError(
                f"{size}: {what} about {need.gpu / GIB:.2f} GiB of GPU memory but {free / GIB:.2f} GiB is free; "
                f"use {'a smaller --tile' if tileable(model) else 'a smaller input'}, or --device cpu"
            )


def _is_allocation_failure(error: BaseException) -> bool:
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in ALLOCATION_FAILURES)


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> torch.device:
    if args.tile < 0 or (args.tile_overlap is not None and args.tile_overlap < 0):
        parser.error("--tile and --tile-overlap must be >= 0")
    if not args.input.exists():
        parser.error(f"input not found: {args.input}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.half is not None and device.type != "cuda":
        parser.error(f"--half {args.half} runs on a GPU only (device is {device}); drop --half on the CPU")
    if args.max_memory is not None and args.max_memory < 0:
        parser.error("--max-memory must be >= 0 (GiB; 0 = no check)")
    return device


def _memory_limit(max_memory: float | None) -> int | None:
    if max_memory is None:
        return available_memory()
    return int(max_memory * GIB) if max_memory > 0 else None


def run_jobs(jobs: Sequence[Job], model: SRModel, args: argparse.Namespace) -> list[Job]:
    """Upscale every job, skipping existing outputs unless --overwrite; returns the failed jobs."""
    failed: list[Job] = []
    half = HALF_DTYPES[args.half] if args.half else None
    limit = _memory_limit(args.max_memory)
    with (
        tqdm(jobs, desc="images", unit="img") as files,
        tqdm(desc="tiles", unit="tile", leave=False) as tiles,
    ):
        for job in files:
            if job.target.exists() and not args.overwrite:
                files.write(
                    f"skipped {job.source}: {job.target} exists (use --overwrite to replace it)",
                    file=sys.stderr,
                )
                continue
            try:
                _upscale_file(job, model, half, limit, tiles)
            except (ImageReadError, OSError, InsufficientMemoryError) as error:
                files.write(f"FAILED {job.source}: {error}", file=sys.stderr)
                failed.append(job)
            except (MemoryError, RuntimeError) as error:
                if not _is_allocation_failure(error):
                    raise
                message = str(error).splitlines()[0]
                files.write(
                    f"FAILED {job.source}: out of memory ({message}); try a smaller --tile or a smaller input",
                    file=sys.stderr,
                )
                failed.append(job)
            else:
                files.write(f"wrote {job.target}")
    return failed


def _upscale_file(job: Job, model: SRModel, half: torch.dtype | None, limit: int | None, tiles: tqdm) -> None:
    image = read_image(job.source, apply_orientation=True)
    check_memory(model, image, limit=limit)
    tiles.reset()
    sr = upscale_image(model, image, half=half, tile_bar=tiles)
    del image
    try:
        save_image(sr, job.target)
    except OSError as error:  # e.g. the folder became read-only or the disk filled up during the run
        reason = error.strerror or str(error)
        raise OSError(
            f"cannot write {job.target} ({reason}); free space or choose another output folder"
        ) from error


def load_model(args: argparse.Namespace, device: torch.device) -> SRModel:
    """The model of --weights on `device`, tiled as asked and planned before any input is read (a generator that
    cannot be tiled exactly runs on the whole image, with a note)."""
    model = SRModel.from_pretrained(args.weights, use_ema=args.ema, map_location=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.tile:
        model.enable_tiling(args.tile, args.tile_overlap)
    plan = (
        model.tiling_plan()
    )  # measured now: a generator that gives NaN/Inf is a usage error, before any work
    if args.tile and plan.note is not None:
        print(
            f"note: {model.source}: {plan.note}; it runs on the whole image (--tile ignored)", file=sys.stderr
        )
    return model


def prepare_outputs(source: Path, jobs: Sequence[Job]) -> None:
    """Before any work: refuse an unwritable output folder (one line with advice); remove the temp files a
    killed run left for these outputs; list the files of an input folder that are not read."""
    for folder in sorted({job.target.parent for job in jobs}):
        reason = unwritable_reason(folder)
        if reason is not None:
            raise ValueError(f"cannot write to {folder} ({reason}); choose another output folder")
    for folder in sorted({job.target.parent for job in jobs}):
        for path in remove_stale_temp_files(
            folder, [job.target.name for job in jobs if job.target.parent == folder]
        ):
            print(f"removed {path}, left by an interrupted run", file=sys.stderr)
    if source.is_dir() and (skipped := other_files(source)):
        print(
            f"skipped {len(skipped)} file(s) of {source} that are not images ({', '.join(IMAGE_EXTENSIONS)}): "
            + ", ".join(p.name for p in skipped),
            file=sys.stderr,
        )


@interruptible("upscale", "rerun the same command to continue (finished outputs are kept)")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = _validate(args, parser)
    try:
        jobs = plan_jobs(args.input, args.output)
        check_inputs_kept(jobs)
        model = load_model(args, device)
        prepare_outputs(args.input, jobs)
    except (WeightsError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = run_jobs(jobs, model, args)
    if failed:
        print(
            f"{len(failed)} of {len(jobs)} inputs failed: {', '.join(str(j.source) for j in failed)}",
            file=sys.stderr,
        )
        return EXIT_FAILED_INPUTS
    return 0


if __name__ == "__main__":
    sys.exit(main())
