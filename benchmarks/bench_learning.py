"""CPU learning curve: PSNR-stage training (experiment=pretrain, dgggan_lite) on BSD100 + Urban100 HR with
generated LR, validating Set5 and Set14 every `--val-every` iterations, for the paper's configuration
(`global_skip: none`) and the bicubic-skip extension (`global_skip: bicubic`), next to MATLAB bicubic.

Usage: python benchmarks/bench_learning.py [--iterations 4000] [--val-every 500] [--plot docs/images/learning_curve.png]
Writes benchmarks/results/learning_curve.json (the curves, bicubic and each variant's best and final point).
Needs `<data-dir>/sr-benchmarks/{BSD100,Urban100,Set5,Set14}` (DGGGAN_DATA_DIR, default ../shared/data).

The two variants train side by side, each in its own process with half of the CPU threads, so that both see
the same machine load. Training never sees Set5 or Set14 (data=benchmark_train). dgggan_lite (C = 32) is the
preset whose FLOPs match the paper's figure; a CPU cannot train the C = 64 model far enough in half an hour.
Learning rate 5e-4 for both: the paper's 1e-4 is tuned for 500k iterations at batch 16 and HR 192.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_result

LEARNING_NOTES = (
    "Y-PSNR (crop 4) on Set5 and Set14, never trained on; `global_skip` none = the paper's configuration, bicubic = "
    "the extension. `best` = the validation point with the highest mean PSNR over the sets. Table and plot: "
    "docs/training.md#learning-curve."
)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = ("none", "bicubic")
SETS = ("Set5", "Set14")


def train_variant(args: argparse.Namespace) -> None:
    """One variant in this process: train, record the curve (MetricHistory) and write it to `args.json`."""
    import torch

    from dgggan_pl.config import compose_config
    from dgggan_pl.train import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(args.json).with_suffix(".history.json")  # grows after every validation
        cfg = compose_config(
            [
                "experiment=pretrain",
                "model=dgggan_lite",
                "data=benchmark_train",
                "trainer=cpu",
                "logger=csv",
                f"paths.data_dir={args.data_dir}",
                f"paths.output_dir={tmp}",
                f"model.generator.global_skip={args.variant}",
                f"iterations={args.iterations}",
                f"hr_patch_size={args.hr_patch}",
                f"data.batch_size={args.batch}",
                f"optim.generator.lr={args.lr}",
                "optim.scheduler.milestones=[1000000000]",
                f"seed={args.seed}",
                f"trainer.val_check_interval={args.val_every}",
                "trainer.num_sanity_val_steps=0",
                "metrics.benchmark.metrics=[psnr,ssim]",
                "callbacks.model_checkpoint.monitor=val/Set14/psnr",
                "callbacks.progress_bar=null",
                "callbacks.image_panels=null",
                "callbacks.model_summary=null",
                "+trainer.enable_progress_bar=false",
                "+callbacks.history._target_=dgggan_pl.callbacks.metric_history.MetricHistory",
                f"+callbacks.history.path={history}",
            ]
        )
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        rows = json.loads(history.read_text())
    result = {"variant": args.variant, "wall_seconds": wall, "threads": args.threads, "curve": rows}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def bicubic_scores(data_dir: Path) -> dict[str, float]:
    """MATLAB bicubic x4 of the shipped LR, scored like the model (the horizontal line)."""
    from hydra.utils import instantiate

    from dgggan_pl.config import compose_config
    from dgggan_pl.data.datasets import BenchmarkDataset
    from dgggan_pl.data.imresize import imresize

    cfg = compose_config([f"paths.data_dir={data_dir}", "metrics.benchmark.metrics=[psnr,ssim]"])
    scores = {}
    for name in SETS:
        metrics = instantiate(cfg.metrics.benchmark)()
        for item in BenchmarkDataset(Path(cfg.paths.benchmark_dir) / name, scale=cfg.scale):
            metrics.update(imresize(item["lr"], scale=cfg.scale).clamp(0, 1)[None], item["hr"][None])
        scores[name] = float(metrics.compute()["psnr"])
    return scores


def summary(results: list[dict], bicubic: dict[str, float]) -> dict[str, dict]:
    """Each variant's best validation point (highest mean PSNR over SETS) and final point, in dB and vs bicubic."""

    def point(p: dict) -> dict[str, float]:
        values = {s: p[f"val/{s}/psnr"] for s in SETS}
        gains = {f"{s}_vs_bicubic": p[f"val/{s}/psnr"] - bicubic[s] for s in SETS}
        return {"iteration": p["iteration"], **values, **gains}

    return {
        r["variant"]: {
            "best": point(max(r["curve"], key=lambda p: sum(p[f"val/{s}/psnr"] for s in SETS))),
            "final": point(r["curve"][-1]),
            "wall_minutes": round(r["wall_seconds"] / 60, 1),
        }
        for r in results
    }


def table(results: list[dict], bicubic: dict[str, float]) -> str:
    """Markdown: one row per validation point, PSNR (Y, crop 4) of each variant minus bicubic."""
    header = "| iteration | train min | " + " | ".join(f"{r['variant']} {s}" for r in results for s in SETS)
    lines = [header + " |", "|---:|---:|" + "---:|" * (len(results) * len(SETS))]
    for points in zip(*(r["curve"] for r in results), strict=True):
        minutes = max(p["seconds"] for p in points) / 60
        cells = [
            f"{p[f'val/{s}/psnr']:.2f} ({p[f'val/{s}/psnr'] - bicubic[s]:+.2f})" for p in points for s in SETS
        ]
        lines.append(f"| {points[0]['iteration']} | {minutes:.1f} | " + " | ".join(cells) + " |")
    lines.append("| bicubic | | " + " | ".join(f"{bicubic[s]:.2f}" for _ in results for s in SETS) + " |")
    return "\n".join(lines)


def plot(results: list[dict], bicubic: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SETS), figsize=(10, 3.8), sharex=True)
    labels = {"none": "global_skip: none (paper)", "bicubic": "global_skip: bicubic (extension)"}
    for axis, name in zip(axes, SETS, strict=True):
        for result in results:
            curve = result["curve"]
            axis.plot(
                [p["iteration"] for p in curve],
                [p[f"val/{name}/psnr"] for p in curve],
                marker="o",
                label=labels.get(result["variant"], result["variant"]),
            )
        axis.axhline(bicubic[name], color="grey", linestyle="--", label="MATLAB bicubic")
        axis.set_title(f"{name} (Y-PSNR, crop 4)")
        axis.set_xlabel("iteration")
        axis.set_ylabel("dB")
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--hr-patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per variant (default: cores / variants)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the curves as a PNG")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DGGGAN_DATA_DIR", DEFAULT_DATA))
    )
    parser.add_argument("--work-dir", default=None, help="keep each variant's curve here as it grows")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: train one variant in this process
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        train_variant(args)
        return
    variants = args.variants.split(",")
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(variants))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work_dir or tmp
        jobs = []
        for variant in variants:
            out = Path(tmp) / f"{variant}.json"
            command = [sys.executable, __file__, "--variant", variant, "--json", str(out)]
            command += [f"--iterations={args.iterations}", f"--val-every={args.val_every}"]
            command += [f"--hr-patch={args.hr_patch}", f"--batch={args.batch}", f"--lr={args.lr}"]
            command += [f"--seed={args.seed}", f"--threads={threads}", f"--data-dir={args.data_dir}"]
            jobs.append((out, subprocess.Popen(command)))
        for _, job in jobs:
            if job.wait() != 0:
                sys.exit(f"a variant failed (exit {job.returncode}); see its output above")
        results = [json.loads(out.read_text()) for out, _ in jobs]
    bicubic = bicubic_scores(args.data_dir)
    setting = (
        f"experiment=pretrain, dgggan_lite, {args.iterations} iterations, batch {args.batch}, HR {args.hr_patch}, "
        f"lr {args.lr}, train BSD100+Urban100 HR, {threads} thread(s) per variant"
    )
    print(setting)
    for result in results:
        print(f"  {result['variant']}: {result['wall_seconds'] / 60:.1f} min wall (training + validation)")
    print(table(results, bicubic))
    figures = {
        "setting": setting,
        "bicubic": bicubic,
        "summary": summary(results, bicubic),
        "curves": results,
    }
    write_result(
        "learning_curve", figures, title="Learning curve (PSNR stage, dgggan_lite, CPU)", notes=LEARNING_NOTES
    )
    if args.plot:
        plot(results, bicubic, args.plot, setting)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
