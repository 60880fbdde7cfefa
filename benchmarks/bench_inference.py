"""CPU inference time of DGGGAN, DGGGAN-lite and ESRGAN's RRDBNet on the same LR input, side by side.

Goal (issue 2): dgggan <= 1.0x RRDBNet's time, dgggan_lite <= 0.3x. Models are timed round-robin (one
forward of each per round, rotating the order) so that load from other processes hits all of them alike;
the median over rounds is reported.

    .venv/bin/python benchmarks/bench_inference.py [--size 128] [--rounds 5] [--warmup 1] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dgggan_pl.complexity import build_generator_from_config, count_gflops, count_parameters
from dgggan_pl.models.baselines import RRDBNet
from record import write_result

REFERENCE = "RRDBNet"
GOALS = {"dgggan": 1.0, "dgggan_lite": 0.3}  # issue 2: time ratio to RRDBNet


def build_models() -> dict[str, nn.Module]:
    return {
        "dgggan": build_generator_from_config(["model=dgggan"]),
        "dgggan_lite": build_generator_from_config(["model=dgggan_lite"]),
        REFERENCE: RRDBNet(),
    }


def time_round_robin(
    runners: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each runner, interleaved so that background load is shared fairly."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR height and width")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="run models and input as channels_last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    lr = torch.rand(1, 3, args.size, args.size).to(memory_format=memory_format)
    models = {name: m.eval().to(memory_format=memory_format) for name, m in build_models().items()}

    def runner(model: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(lr)

        return run

    times = time_round_robin({n: runner(m) for n, m in models.items()}, args.rounds, args.warmup)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"CPU inference, input 1x3x{args.size}x{args.size}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, channels_last={args.channels_last}, "
        f"median of {args.rounds} round-robin rounds after {args.warmup} warm-up"
    )
    print()
    print(f"| model | params | GFLOPs | median s | min s | time / {REFERENCE} | goal |")
    print("|---|---|---|---|---|---|---|")
    figures = {}
    for name, model in models.items():
        ratio = medians[name] / medians[REFERENCE]
        goal = GOALS.get(name)
        verdict = "-" if goal is None else f"<= {goal}x: {'met' if ratio <= goal else 'MISSED'}"
        gflops = count_gflops(model, (args.size, args.size))
        print(
            f"| {name} | {count_parameters(model):,} | {gflops:.1f} | {medians[name]:.3f} | "
            f"{min(times[name]):.3f} | {ratio:.3f}x | {verdict} |"
        )
        figures[name] = {
            "median_seconds": medians[name],
            "min_seconds": min(times[name]),
            "per_reference": ratio,
        }
        figures[name] |= {"goal_per_reference": goal, "goal_met": ratio <= goal} if goal is not None else {}
    layout = "channels_last" if args.channels_last else "contiguous"
    write_result(
        f"inference_{layout}",
        {"input_size": args.size, "rounds": args.rounds, "models": figures},
        title=f"CPU inference time vs {REFERENCE} ({layout})",
        notes=f"Whole-image forward of random-weight models, median of round-robin rounds; per_reference = time / "
        f"{REFERENCE}'s (docs/models.md#inference-time).",
    )


if __name__ == "__main__":
    main()
