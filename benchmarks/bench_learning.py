"""Learning check: experiment=pretrain with dgggan_lite on the embedded sample set, for a fixed budget of
iterations, then PSNR/SSIM on Set5 next to MATLAB bicubic (both printed; the goal is to beat bicubic).

Usage: python benchmarks/bench_learning.py [--iterations 1000] [--lr 5e-4] [--data-dir ../shared/data]
Needs the Set5 benchmark folder (`<data-dir>/sr-benchmarks/Set5`).

Training images: the natural photos of data=sample only (astronaut, coffee, motorcycle). The sample set's other
train images are unlike Set5: hubble_deep_field is mostly black, retina is mostly a flat red disc on black (MATLAB
bicubic already reaches L1 0.9/255 on its crops, vs 6.8-11/255 on the photos), immunohistochemistry is a stain
micrograph. On a CPU budget they only spend iterations and bias the colour mapping (docs/training.md, Figures).
Learning rate 5e-4: 2e-4 learns the colour mapping too slowly in a few hundred iterations; 1e-3 diverged.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hydra.utils import instantiate

from dgggan_pl.config import compose_config
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def bicubic_scores(cfg, set_dir: Path) -> dict[str, float]:
    metrics = instantiate(cfg.metrics.benchmark)()
    for item in BenchmarkDataset(set_dir, scale=cfg.scale, lr_source=cfg.data.lr_source):
        metrics.update(imresize(item["lr"], scale=cfg.scale).clamp(0, 1)[None], item["hr"][None])
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)  # about 5 min on 2 CPU cores
    parser.add_argument("--hr-patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--train-images",
        default="astronaut,coffee,motorcycle",
        help="comma-separated data=sample train images (the natural photos; see the module docstring)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DGGGAN_DATA_DIR", DEFAULT_DATA))
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            [
                "experiment=pretrain",
                "model=dgggan_lite",
                "data=sample",
                "trainer=cpu",
                "logger=csv",
                f"paths.data_dir={args.data_dir}",
                f"paths.output_dir={tmp}",
                f"iterations={args.iterations}",
                f"hr_patch_size={args.hr_patch}",
                f"data.batch_size={args.batch}",
                f"optim.generator.lr={args.lr}",
                f"data.train_source.names=[{args.train_images}]",
                "data.val_sets=[Set5]",
                "data.test_sets=[Set5]",
                "data.val_sources={}",
                "data.test_sources={}",
                f"trainer.val_check_interval={args.iterations}",
                "trainer.num_sanity_val_steps=0",
                "metrics.benchmark.metrics=[psnr,ssim]",
                "callbacks.model_checkpoint.monitor=val/Set5/psnr",
                "callbacks.progress_bar=null",
                "+trainer.enable_progress_bar=false",
            ]
        )
        start = time.perf_counter()
        metrics = train(cfg)
        minutes = (time.perf_counter() - start) / 60
        bicubic = bicubic_scores(cfg, Path(cfg.data.benchmark_dir) / "Set5")
    model_psnr, model_ssim = metrics["test/Set5/psnr"], metrics["test/Set5/ssim"]
    print(
        f"pretrain dgggan_lite, {args.iterations} iterations (batch {args.batch}, HR {args.hr_patch}, lr {args.lr}, "
        f"train images {args.train_images}), {minutes:.1f} min"
    )
    print(f"Set5 PSNR/SSIM (Y, crop 4): model {model_psnr:.2f} dB / {model_ssim:.4f}")
    print(f"Set5 PSNR/SSIM (Y, crop 4): MATLAB bicubic {bicubic['psnr']:.2f} dB / {bicubic['ssim']:.4f}")
    print(
        f"model - bicubic: {model_psnr - bicubic['psnr']:+.2f} dB ({'beats' if model_psnr > bicubic['psnr'] else 'below'} bicubic)"
    )


if __name__ == "__main__":
    main()
