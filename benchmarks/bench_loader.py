"""Training-loader throughput per worker: PNG sub-images vs the packed `.npy` format.

Goal (issue 3): >= 150 samples/s per worker (an H100 step at batch 16 consumes ~250 samples/s).
Builds real 480x480 / 120x120 sub-images from Urban100 (the largest shared images) with the prepare code, then
measures, side by side in one run, `TrainPatchDataset` items (HR crop 192, flips/rotations) read in-process
(what one DataLoader worker does) and through a one-worker DataLoader at batch 16 (adds collation and IPC).

    .venv/bin/python benchmarks/bench_loader.py [--images 20] [--samples 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dgggan_pl.data.datasets import FolderPairs, TrainPatchDataset
from dgggan_pl.data.packed import PackedPairs, pack_folder
from dgggan_pl.data.seeded_samplers import EpochSeededSampler
from dgggan_pl.prepare import HR_SUBDIR, LR_SUBDIR, prepare
from record import write_result

SCALE = 4
HR_PATCH = 192  # docs/design.md#optimisation
BATCH = 16  # docs/design.md#optimisation
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _in_process(dataset: TrainPatchDataset, samples: int) -> float:
    start = time.perf_counter()
    for index in range(samples):
        dataset[(0, index)]
    return samples / (time.perf_counter() - start)


def _one_worker(dataset: TrainPatchDataset, samples: int) -> float:
    sampler = EpochSeededSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=1, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    while seen < samples:
        seen += len(next(iterator)["hr"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DGGGAN_DATA_DIR", DEFAULT_DATA))
    )
    parser.add_argument("--images", type=int, default=20, help="Urban100 images to cut into sub-images")
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "HR"
        source.mkdir()
        for path in sorted((args.data_dir / "sr-benchmarks" / "Urban100" / "HR").glob("*.png"))[
            : args.images
        ]:
            os.symlink(path, source / path.name)
        out = Path(tmp) / "out"
        total, errors = prepare(source, out, lr_dir=None, workers=os.cpu_count() or 1, progress=False)
        assert not errors, errors
        hr_dir, lr_dir = out / HR_SUBDIR, out / LR_SUBDIR.format(scale=SCALE)
        pack_folder(hr_dir)
        pack_folder(lr_dir)
        print(
            f"{total} sub-images (480x480 HR, 120x120 LR) from {args.images} Urban100 images; "
            f"HR crop {HR_PATCH}, {args.samples} samples, torch threads 1, {os.cpu_count()} CPUs"
        )
        results = {}
        for label, source_pairs in (
            ("png", FolderPairs(hr_dir, lr_dir, SCALE)),
            ("packed", PackedPairs(hr_dir, lr_dir, SCALE)),
        ):
            dataset = TrainPatchDataset(
                source_pairs, scale=SCALE, hr_patch_size=HR_PATCH, samples_per_epoch=10 * total
            )
            _in_process(dataset, 20)  # warm the page cache for both formats alike
            results[label] = (_in_process(dataset, args.samples), _one_worker(dataset, args.samples))
            print(
                f"{label:>7}: {results[label][0]:7.1f} samples/s in-process, {results[label][1]:7.1f} samples/s "
                f"through a 1-worker DataLoader (batch {BATCH})"
            )
        print(
            f"packed / png: {results['packed'][0] / results['png'][0]:.1f}x in-process, "
            f"{results['packed'][1] / results['png'][1]:.1f}x 1-worker loader"
        )
    figures = {
        label: {"in_process_samples_per_s": rates[0], "one_worker_samples_per_s": rates[1]}
        for label, rates in results.items()
    }
    figures["packed_per_png"] = {
        "in_process": results["packed"][0] / results["png"][0],
        "one_worker": results["packed"][1] / results["png"][1],
    }
    write_result(
        "loader",
        {"sub_images": total, "images": args.images, "samples": args.samples, **figures},
        title="Training loader throughput: PNG vs packed sub-images",
        notes=f"Sub-images of Urban100 HR, HR crop {HR_PATCH}, batch {BATCH}, torch threads 1 (docs/data.md).",
    )


if __name__ == "__main__":
    main()
