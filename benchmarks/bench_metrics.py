"""CPU seconds per 512x512 image: NIQE (both conventions), each other metric, and the whole validation set.

Goal (issue 4): NIQE under 0.5 s per 512x512 image on CPU. Runners are timed round-robin (one call of each per
round, rotating the order) so that load from other processes hits all of them alike; medians are reported,
with each runner's ratio to the whole metric set.
LPIPS uses the random backbone here (same FLOPs as the pretrained AlexNet, which this machine cannot download).

    .venv/bin/python benchmarks/bench_metrics.py --niqe-model PATH/modelparameters.mat [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from dgggan_pl.metrics.fidelity import psnr_y, quantize_8bit, ssim_y
from dgggan_pl.metrics.niqe import LIVE_MODEL_SHA256, NIQE, load_pristine_model, niqe_input
from dgggan_pl.metrics.perceptual import build_lpips, lpips_distance
from dgggan_pl.metrics.suite import BenchmarkMetrics
from record import write_result

NIQE_GOAL_S = 0.5  # issue 4
WHOLE = "whole set (psnr+ssim+lpips+niqe)"


def build_runners(model_path: str, size: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, size, size, generator=gen)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    niqe = NIQE(*load_pristine_model(model_path, None, LIVE_MODEL_SHA256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lpips = build_lpips("random")
        suite = BenchmarkMetrics(
            4, ["psnr", "ssim", "lpips", "niqe"], lpips="random", niqe_model_path=model_path
        )

    def whole() -> None:
        suite.reset()
        suite.update(sr, hr, ["x"])
        suite.compute()

    return {
        "niqe (pirm)": lambda: niqe(niqe_input(sr, "pirm", 4)),
        "niqe (official)": lambda: niqe(niqe_input(sr, "official", 0)),
        "psnr": lambda: psnr_y(sr, hr, 4),
        "ssim": lambda: ssim_y(sr, hr, 4),
        "lpips": lambda: lpips_distance(lpips, quantize_8bit(sr), quantize_8bit(hr)),
        WHOLE: whole,
    }


def time_round_robin(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    names = list(runners)
    for name in names:  # warm-up
        runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--niqe-model", required=True, help="LIVE modelparameters.mat")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    times = time_round_robin(build_runners(args.niqe_model, args.size), args.rounds)
    whole = statistics.median(times[WHOLE])
    print(f"{args.size}x{args.size} image, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'metric':36s} {'s/image':>8s} {'x whole':>8s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:36s} {median:8.3f} {median / whole:8.2f}")
    niqe = statistics.median(times["niqe (pirm)"])
    verdict = "meets" if niqe < NIQE_GOAL_S else "misses"
    print(f"NIQE {niqe:.3f} s/image {verdict} the goal of < {NIQE_GOAL_S} s")
    write_result(
        "metrics_speed",
        {
            "size": args.size,
            "rounds": args.rounds,
            "seconds_per_image": {name: statistics.median(values) for name, values in times.items()},
            "niqe_goal_seconds": NIQE_GOAL_S,
            "niqe_goal_met": niqe < NIQE_GOAL_S,
        },
        title="Metric speed on the CPU",
        notes="Median seconds per image of each metric and of the whole validation set (docs/metrics.md#speed).",
    )


if __name__ == "__main__":
    main()
