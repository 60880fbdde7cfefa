"""Multi-process runs as users with other GPU counts start them, on gloo CPU processes (slow, subprocesses).

- The mission's sweep (`-m ablation=no_grad,no_se`) on 3 processes, more than the 2 images of the Sample
  validation/test set: both jobs complete, and every metric of every tested checkpoint equals a 1-process
  evaluation of the same checkpoint.
- `strategy=ddp_step_sync` and Lightning's `ddp_find_unused_parameters_true` end with the same weights (to
  float tolerance) after a few GAN iterations on 2 and 4 processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dgggan_pl.launch.commands import clean_env
from dgggan_pl.train import RESOLVED_CONFIG, build_module

TIMEOUT_S = 900  # a 3-rank job takes ~1-3 min on 2 busy cores
QUIET = ["logger=none", "metrics.lpips=disabled", "callbacks.image_panels=null"]
NETWORKS = ("generator.", "image_critic.", "gradient_critic.")
# Both strategies average the same gradients, but in different buckets, so gloo may sum 3+ ranks in another
# order: the averages can differ in the last bit. Adam's first steps are about lr * sign(g), which turns a
# last-bit difference in a near-zero gradient into a weight difference of up to lr: measured on 4 processes,
# 1.9e-5 against updates of 3e-4 (on 2 processes the weights were bit-identical). With SGD a weight difference
# stays as small as the gradients' rounding, so the 4-process comparison uses it; both step through the same
# DDP code.
SGD = [f"optim.{n}._target_=torch.optim.SGD" for n in ("generator", "critic")] + [
    f"~optim.{n}.betas" for n in ("generator", "critic")
]
OPTIMIZERS = {"adam": [], "sgd": SGD}
WEIGHT_RTOL = 1e-4  # of the largest update


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(os.environ), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "dgggan_pl.train", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def evaluate_on_one_process(job_dir: Path, checkpoint: Path, stage: str) -> dict[str, float]:
    """`<stage>/...` metrics (`val` or `test`) of `checkpoint` on one process, with the job's resolved config."""
    cfg = OmegaConf.load(job_dir / RESOLVED_CONFIG)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1.0,
        limit_test_batches=1.0,
    )
    run = trainer.validate if stage == "val" else trainer.test
    run(build_module(cfg), datamodule=instantiate(cfg.data), ckpt_path=str(checkpoint), weights_only=True)
    return {
        key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith(f"{stage}/")
    }


def _stage(metrics: dict[str, float], stage: str) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key.startswith(f"{stage}/")}


@pytest.mark.slow
def test_mission_sweep_on_more_processes_than_images_matches_one_process(tmp_path: Path) -> None:
    ranks = 3
    sweep = tmp_path / "sweep"
    _run(
        [
            "-m",
            "ablation=no_grad,no_se",
            "debug=smoke",
            "trainer=ddp_cpu",
            f"trainer.devices={ranks}",
            f"data.batch_size={ranks}",  # the global batch: 1 per process
            "trainer.limit_val_batches=1.0",  # the whole set on every rank count (smoke validates 1 batch)
            "trainer.limit_test_batches=1.0",
            *QUIET,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    job_dirs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "run_info.json").is_file())
    assert len(job_dirs) == 2
    for job_dir in job_dirs:
        info = json.loads((job_dir / "run_info.json").read_text())
        assert info["status"] == "completed"
        cfg = OmegaConf.load(job_dir / RESOLVED_CONFIG)
        assert (
            len(cfg.data.test_sources.Sample.names) < ranks == len(list((job_dir / "ranks").glob("*.json")))
        )
        tested = {
            role: record for role, record in info["checkpoints"].items() if role in ("last", "selected")
        }
        assert "last" in tested
        for role, record in tested.items():
            distributed = _stage(record["metrics"], "test")
            assert {"test/Sample/psnr", "test/Sample/ssim"} <= set(distributed), distributed
            single = evaluate_on_one_process(job_dir, job_dir / record["path"], "test")
            assert single == distributed, f"{job_dir.name} {role}: 1 process {single}, {ranks}: {distributed}"
        # the final validation ran on the weights last.ckpt holds (it is written at that validation's end)
        last = job_dir / tested["last"]["path"]
        assert evaluate_on_one_process(job_dir, last, "val") == _stage(info["metrics"], "val")


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(NETWORKS) and v.is_floating_point()}


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "optimizer"), [(2, "adam"), (4, "sgd")])
def test_step_sync_ends_with_the_weights_of_lightning_ddp(
    tmp_path: Path, processes: int, optimizer: str
) -> None:
    weights = {}
    for strategy in ("ddp_step_sync", "ddp_find_unused_parameters_true"):
        run_dir = tmp_path / strategy
        _run(
            [
                "experiment=full",
                "debug=smoke",
                "trainer=ddp_cpu",
                f"trainer.devices={processes}",
                f"trainer.strategy={strategy}",
                f"data.batch_size={2 * processes}",
                "iterations=3",
                "data.test_sources={}",
                *OPTIMIZERS[optimizer],
                *QUIET,
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "ranks").glob("rank*.json"))]
        assert len(ranks) == processes and len({json.dumps(r["final_weights_sha256"]) for r in ranks}) == 1
        weights[strategy] = _final_weights(run_dir)
    cfg = OmegaConf.load(tmp_path / "ddp_step_sync" / RESOLVED_CONFIG)
    pl.seed_everything(int(cfg.seed))
    start = {k: v for k, v in build_module(cfg).state_dict().items() if k in weights["ddp_step_sync"]}
    step_sync, lightning = weights["ddp_step_sync"], weights["ddp_find_unused_parameters_true"]
    assert set(step_sync) == set(lightning) == set(start)
    difference = max((step_sync[k] - lightning[k]).abs().max().item() for k in step_sync)
    moved = max((step_sync[k] - start[k]).abs().max().item() for k in step_sync)
    print(
        f"{processes} processes, {optimizer}: max |step_sync - lightning ddp| {difference:.3g}, update {moved:.3g}"
    )
    assert moved > 0 and difference <= WEIGHT_RTOL * moved
    for network in NETWORKS:  # every network took steps in both runs
        assert any(not torch.equal(step_sync[k], start[k]) for k in step_sync if k.startswith(network))
