"""Peak RSS of upscaling one large image, the old float-output path and today's `upscale`, side by side.

Goal (issue 16): at most 2.5x the uint8 output + 1 GiB (the imports alone take about 0.5 GiB).

    .venv/bin/python benchmarks/bench_upscale_memory.py [--size 3000 2000] [--tile 128] [--threads 1]

Input: DIV2K 0853 (`$DGGGAN_DATA_DIR/DIV2K-sample/LR_bicubic/X4/0853x4.png`) resized to --size with
Pillow's bicubic; model: the tests' tiny C = 8 generator (2 blocks, random weights, seed 0: memory does not
depend on the values or on the block count). Each path runs in its own subprocess, so that `ru_maxrss` is
its own peak:
- before: the upscaler as it was: float HR tiles into a float image, clamped copy, then `save_image`
  (which rounds into a third copy), with every LR-stage map kept (`encode_tiled(inplace=False)`);
- after: `python -m dgggan_pl.upscale` itself (tiles rounded into a uint8 buffer, LR maps updated in place,
  each head recomputed for its long skip rather than held);
- model: the imports of `dgggan_pl.upscale` and the loaded model alone, so that the peak beyond the model can be
  set beside the upscaler's own estimate (which excludes the model).
The two PNGs are compared at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench_upscale import REPO_ROOT, image_path  # the same DIV2K input and data-folder lookup
from record import write_result

KIB = 1024  # Linux reports ru_maxrss in KiB
GIB = 1024**3
GOAL_OUTPUT_FACTOR, GOAL_EXTRA_BYTES = 2.5, GIB
TINY_GENERATOR = {
    "_target_": "dgggan_pl.models.generator.DGGGANGenerator",
    "channels": 8,
    "num_blocks": 2,
    "injection_blocks": [1],
    "se_reduction": 4,
}


def prepare(scratch: Path, size: tuple[int, int]) -> tuple[Path, Path]:
    """The resized input PNG and a Lightning-style checkpoint of the tiny generator."""
    import torch
    from hydra.utils import instantiate
    from PIL import Image

    image = scratch / "input.png"
    with Image.open(image_path()) as source:
        source.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(image)
    torch.manual_seed(0)
    state = {f"generator.{k}": v for k, v in instantiate(TINY_GENERATOR).state_dict().items()}
    weights = scratch / "tiny.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"generator": TINY_GENERATOR}}}, weights)
    return image, weights


def before(image: Path, weights: Path, target: Path, tile: int) -> None:
    """The float path the upscaler had: float output, clamped copy, rounding in `save_image`."""
    import torch

    from dgggan_pl.data.io import read_image, save_image, to_float
    from dgggan_pl.tiling import LR_STAGE_TILE_FACTOR, decode_tiled, encode_tiled, hr_stage_radius
    from dgggan_pl.weights import load_generator

    generator, _ = load_generator(weights)
    lr = to_float(read_image(image)).unsqueeze(0)
    overlap = hr_stage_radius(generator)
    with torch.inference_mode():
        features = encode_tiled(generator, lr, LR_STAGE_TILE_FACTOR * tile, inplace=False)
        sr = decode_tiled(generator, features, lr, tile, overlap)
        del features
        sr = sr[0].float().clamp(0, 1).cpu()
    save_image(sr, target)


def after(image: Path, weights: Path, target: Path, tile: int) -> None:
    from dgggan_pl.upscale import main

    status = main(
        [str(image), str(target), "--weights", str(weights), "--tile", str(tile), "--device", "cpu"]
    )
    if status != 0:
        sys.exit(f"upscale exited with {status}")


def model_only(image: Path, weights: Path, target: Path, tile: int) -> None:
    """What `after` holds before its first input: the upscaler's imports and the loaded model."""
    import dgggan_pl.upscale  # noqa: F401 - the imports are what is measured
    from dgggan_pl.sr_model import SRModel

    SRModel.from_pretrained(weights).enable_tiling(tile).tiling_plan()


PATHS = {"before": before, "after": after, "model": model_only}


def child(path_name: str, image: Path, weights: Path, target: Path, tile: int, threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    wall = time.perf_counter()
    PATHS[path_name](image, weights, target, tile)
    wall = time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    print(json.dumps({"path": path_name, "peak_rss": peak, "wall_s": wall}))


def measure(path_name: str, image: Path, weights: Path, target: Path, tile: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", path_name, "--tile", str(tile), "--threads", str(threads)]
    command += ["--image", str(image), "--weights", str(weights), "--target", str(target)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if completed.returncode != 0:
        sys.exit(f"{path_name} run failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, default=[3000, 2000], metavar=("W", "H"), help="LR size")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per run (0 = torch's default)"
    )
    parser.add_argument("--child", choices=tuple(PATHS), help=argparse.SUPPRESS)
    for hidden in ("--image", "--weights", "--target"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.image, args.weights, args.target, args.tile, args.threads)
        return

    import numpy as np
    import torch
    from PIL import Image

    from dgggan_pl.data.io import read_image
    from dgggan_pl.sr_model import SRModel
    from dgggan_pl.upscale import memory_needed

    width, height = args.size
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        image, weights = prepare(scratch, (width, height))
        model = SRModel.from_pretrained(weights).enable_tiling(args.tile)
        output_bytes = 3 * model.scale**2 * width * height
        goal = GOAL_OUTPUT_FACTOR * output_bytes + GOAL_EXTRA_BYTES
        estimate = memory_needed(model, height, width)
        print(
            f"input {width}x{height} -> {4 * width}x{4 * height} (uint8 output {output_bytes / GIB:.3f} GiB); "
            f"C = 8 tiny generator, tile {args.tile}, {args.threads or 'default'} thread(s); "
            f"goal <= {GOAL_OUTPUT_FACTOR} x output + 1 GiB = {goal / GIB:.2f} GiB"
        )
        runs = {}
        for path_name in PATHS:
            runs[path_name] = measure(
                path_name, image, weights, scratch / f"{path_name}.png", args.tile, args.threads
            )
            r = runs[path_name]
            print(f"{path_name:6s}: peak RSS {r['peak_rss'] / GIB:5.2f} GiB  wall {r['wall_s']:6.1f} s")
        ratio = runs["after"]["peak_rss"] / runs["before"]["peak_rss"]
        verdict = "met" if runs["after"]["peak_rss"] <= goal else "MISSED"
        print(f"after / before: {ratio:.2f}x; goal {verdict}")
        beyond_model = runs["after"]["peak_rss"] - runs["model"]["peak_rss"]
        print(
            f"upscale's own estimate beyond the loaded model: {estimate.host / GIB:.2f} GiB ({estimate.parts}); "
            f"measured: {beyond_model / GIB:.2f} GiB"
        )
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own 96-megapixel outputs
        a, b = (read_image(scratch / f"{p}.png").to(torch.int16) for p in ("before", "after"))
        gap = (a - b).abs()
        print(
            f"before vs after PNG: max |difference| {int(gap.max())} (8-bit levels), "
            f"{float(np.count_nonzero(gap.numpy())) / gap.numel():.2e} of values differ "
            "(after runs channels_last: float rounding may flip a level)"
        )
    write_result(
        "upscale_memory",
        {
            "input": f"{width}x{height}",
            "tile": args.tile,
            "output_gib": output_bytes / GIB,
            "goal_gib": goal / GIB,
            "goal_met": runs["after"]["peak_rss"] <= goal,
            **{
                name: {"peak_rss_gib": r["peak_rss"] / GIB, "wall_seconds": r["wall_s"]}
                for name, r in runs.items()
                if name != "model"
            },
            "after_per_before": ratio,
            "imports_and_model_gib": runs["model"]["peak_rss"] / GIB,
            "measured_beyond_model_gib": beyond_model / GIB,
            "estimate_gib": estimate.host / GIB,
            "png_max_level_difference": int(gap.max()),
        },
        title="Upscaling a large image: peak RSS before and after the memory work",
        notes="C = 8 tiny generator (memory is in the maps and the output, not the weights); `before` is the old "
        "path reproduced in the benchmark, `after` is `upscale`, `imports_and_model` its imports and loaded model "
        "alone (docs/inference.md#benchmark).",
    )


if __name__ == "__main__":
    main()
