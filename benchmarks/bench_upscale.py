"""CPU time and peak RSS of x4 upscaling DIV2K 0853 (510x339 -> 2040x1356), tiled vs untiled, and
contiguous vs channels_last, side by side.

Goals (issue 7): peak RSS < 2 GB tiled; tiling overhead < 15 % of the untiled time. Issue 16: use
channels_last where it is faster.

    .venv/bin/python benchmarks/bench_upscale.py [--models dgggan dgggan_lite] [--tiles 64 128] [--threads 1]
        [--formats contiguous channels_last] [--skip-untiled]

Each (model, mode) runs in its own subprocess, so that `ru_maxrss` is that run's peak alone. Weights are
random (seed 0): timing and memory do not depend on their values. The tiled and untiled SR images are
compared at the end (max |difference|, the seam-free check at full scale). Finds the image through
`$DGGGAN_DATA_DIR` (default `../shared/data` beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_result

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = Path("DIV2K-sample/LR_bicubic/X4/0853x4.png")
RSS_GOAL_BYTES = 2 * 1024**3
OVERHEAD_GOAL = 0.15
KIB = 1024  # Linux reports ru_maxrss in KiB


def image_path() -> Path:
    data_dir = Path(os.environ.get("DGGGAN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    path = data_dir / IMAGE
    if not path.is_file():
        sys.exit(
            f"benchmark image not found: {path} (set DGGGAN_DATA_DIR to the folder holding {IMAGE.parts[0]}/)"
        )
    return path


FORMATS = ("contiguous", "channels_last")


def child(model: str, tile: int, threads: int, out: Path, memory_format: str) -> None:
    """One measured run; prints a JSON line with wall/CPU seconds and peak RSS."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from hydra.utils import instantiate

    from dgggan_pl.config import compose_config
    from dgggan_pl.data.io import read_image, to_float
    from dgggan_pl.tiling import upscale_tiled

    torch.manual_seed(0)
    generator = instantiate(compose_config([f"model={model}"]).model.generator).eval()
    lr = to_float(read_image(image_path())).unsqueeze(0)
    if memory_format == "channels_last":  # as `upscale --channels-last` does
        generator = generator.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        sr = upscale_tiled(generator, lr, tile) if tile > 0 else generator(lr).sr
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.save(sr.clone(), out)
    result = {
        "model": model,
        "tile": tile,
        "format": memory_format,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB,
        "rss_before": rss_before,
        "threads": torch.get_num_threads(),
        "shape": list(sr.shape),
    }
    print(json.dumps(result))


def measure(model: str, tile: int, threads: int, out: Path, memory_format: str) -> dict:
    command = [sys.executable, __file__, "--child", "--models", model, "--tiles", str(tile)]
    command += ["--threads", str(threads), "--out", str(out), "--formats", memory_format]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if completed.returncode != 0:
        sys.exit(f"child run failed ({model}, tile {tile}, {memory_format}):\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


Key = tuple[int, str]  # (tile, memory format)


def _gap(outputs: dict[Key, Path], a: Key, b: Key) -> float:
    import torch

    return (torch.load(outputs[a]) - torch.load(outputs[b])).abs().max().item()


def report(model: str, runs: dict[Key, dict], outputs: dict[Key, Path]) -> None:
    gib = 1024**3
    for (tile, memory_format), r in runs.items():
        mode = f"tiled {tile}" if tile else "untiled"
        print(
            f"{model:12s} {mode:10s} {memory_format:13s} wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  "
            f"peak RSS {r['peak_rss'] / gib:5.2f} GiB (model loaded: {r['rss_before'] / gib:4.2f})  "
            f"threads {r['threads']}  out {r['shape']}"
        )
    for tile, memory_format in runs:
        untiled = (0, memory_format)
        if tile and untiled in runs:
            r, base = runs[(tile, memory_format)], runs[untiled]
            wall, cpu = r["wall_s"] / base["wall_s"] - 1, r["cpu_s"] / base["cpu_s"] - 1
            print(
                f"{model:12s} tiled {tile} {memory_format}: overhead {cpu:+.1%} CPU time, {wall:+.1%} wall time vs "
                f"untiled (goal < {OVERHEAD_GOAL:.0%}); max |tiled - untiled| = "
                f"{_gap(outputs, (tile, memory_format), untiled):.2e} (goal <= 1/255)"
            )
        if tile:
            ok = runs[(tile, memory_format)]["peak_rss"] < RSS_GOAL_BYTES
            print(
                f"{model:12s} tiled {tile} {memory_format}: peak RSS goal < 2 GiB {'met' if ok else 'MISSED'}"
            )
    for tile in sorted({t for t, _ in runs}):
        contiguous, channels_last = (tile, FORMATS[0]), (tile, FORMATS[1])
        if contiguous in runs and channels_last in runs:
            a, b = runs[contiguous], runs[channels_last]
            mode = f"tiled {tile}" if tile else "untiled"
            print(
                f"{model:12s} {mode}: channels_last / contiguous = {b['cpu_s'] / a['cpu_s']:.3f}x CPU time, "
                f"{b['wall_s'] / a['wall_s']:.3f}x wall time; max |difference| = "
                f"{_gap(outputs, contiguous, channels_last):.2e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["dgggan", "dgggan_lite"])
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128], help="LR pixels per HR-stage tile")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (0 = torch's default). 1 by default: on a shared machine, OpenMP threads "
        "spin-wait for busy cores, which inflates CPU time unevenly across runs",
    )
    parser.add_argument(
        "--skip-untiled", action="store_true", help="when the untiled run does not fit in RAM"
    )
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="memory formats")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.models[0], args.tiles[0], args.threads, args.out, args.formats[0])
        return
    threads = args.threads or "torch default"
    print(f"image {image_path()}; torch threads per run: {threads}; {os.cpu_count()} CPUs; random weights")
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            tiles = args.tiles if args.skip_untiled else [*args.tiles, 0]
            keys = [(tile, memory_format) for tile in tiles for memory_format in args.formats]
            outputs = {key: Path(scratch) / f"{model}-{key[0]}-{key[1]}.pt" for key in keys}
            runs = {key: measure(model, *key[:1], args.threads, outputs[key], key[1]) for key in keys}
            report(model, runs, outputs)
            figures[model] = {
                f"{'tiled_' + str(tile) if tile else 'untiled'}_{memory_format}": {
                    "wall_seconds": r["wall_s"],
                    "cpu_seconds": r["cpu_s"],
                    "peak_rss_gib": r["peak_rss"] / 1024**3,
                    "model_loaded_rss_gib": r["rss_before"] / 1024**3,
                }
                for (tile, memory_format), r in runs.items()
            }
    write_result(
        "upscale",
        {"image": image_path().name, "threads": args.threads, "models": figures},
        title="Tiled upscaling: time and peak RSS",
        notes=f"One subprocess per run, random weights; goals: peak RSS < 2 GiB tiled, tiling overhead < "
        f"{OVERHEAD_GOAL:.0%} of the untiled CPU time (docs/inference.md#benchmark).",
    )


if __name__ == "__main__":
    main()
