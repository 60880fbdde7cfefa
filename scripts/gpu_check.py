"""`make gpu-check`: one command (< 10 min) for a machine with a CUDA GPU.

1. Iterations/s of experiment=full (dgggan, C = 64) at batch 16, LR 48 -> HR 192, fp32 and bf16 autocast.
2. A few thousand experiment=pretrain iterations (dgggan_lite, batch 16) with validation on the embedded sample set,
   then its PSNR next to MATLAB bicubic.
Runs on the embedded sample set (no data to copy); the perceptual loss uses an untrained VGG19 when the ImageNet
weights are not cached (the cost is the same). Without CUDA it stops at once with a clear message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer

from dgggan_pl.config import compose_config
from dgggan_pl.losses import vgg19_weights_path
from dgggan_pl.train import build_module, derive_max_steps, train

COMMON = ["data=sample", "trainer=gpu", "logger=none", "data.num_workers=4", "data.batch_size=16"]


class IterationClock(Callback):
    """Wall time of every training iteration (CUDA-synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def throughput(precision: str, iterations: int, warmup: int, output_dir: str) -> float:
    weights = "imagenet" if vgg19_weights_path().is_file() else "random"
    cfg = compose_config(
        [
            "experiment=full",
            *COMMON,
            f"iterations={iterations}",
            f"loss.terms.percept.loss.weights={weights}",
            f"trainer.precision={precision}",
            f"paths.output_dir={output_dir}",
        ]
    )
    clock = IterationClock()
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=derive_max_steps(cfg),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    trainer.fit(build_module(cfg), datamodule=instantiate(cfg.data))
    return 1.0 / statistics.median(clock.times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60, help="GAN iterations per throughput run")
    parser.add_argument("--pretrain-iterations", type=int, default=3000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False (use `make demo` on CPU)")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rates = {p: throughput(p, args.iterations, 10, tmp) for p in ("32-true", "bf16-mixed")}
        for precision, rate in rates.items():
            print(f"experiment=full dgggan batch 16 48->192 {precision}: {rate:.2f} iterations/s", flush=True)
        print(f"bf16 speed-up: {rates['bf16-mixed'] / rates['32-true']:.2f}x", flush=True)
        start = time.perf_counter()
        metrics = train(
            compose_config(
                [
                    "experiment=pretrain",
                    "model=dgggan_lite",
                    *COMMON,
                    f"iterations={args.pretrain_iterations}",
                    "trainer.val_check_interval=1000",
                    "metrics.lpips=disabled",
                    "callbacks.model_checkpoint.monitor=val/Sample/psnr",
                    f"paths.output_dir={tmp}/pretrain",
                ]
            )
        )
        minutes = (time.perf_counter() - start) / 60
        print(f"pretrain dgggan_lite {args.pretrain_iterations} iterations in {minutes:.1f} min: {metrics}")


if __name__ == "__main__":
    main()
