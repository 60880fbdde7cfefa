"""End-to-end sweeps of `python -m dgggan_pl.train -m ...` on CPU (2-process gloo DDP, tiny widths).

Each test launches the real CLI as a subprocess: Lightning's launchers must never run inside pytest
(docs/design.md#sweeps), and the point is the process layout a user gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dgggan_pl.launch.summary import read_summary
from dgggan_pl.report import main as report_main

SMOKE = ["debug=smoke", "logger=none"]
SWEEP_TIMEOUT_S = 400  # a 2-job 2-rank smoke sweep takes ~1.5 min on 2 busy cores


def _train(tmp_path: Path, *overrides: str, wandb_mode: str = "disabled") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": wandb_mode, "LOCAL_RANK": "0", "MASTER_PORT": "1"}  # leaks to ignore
    return subprocess.run(
        [sys.executable, "-m", "dgggan_pl.train", "-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )


def _ranks(job_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((job_dir / "ranks").glob("rank*.json"))]


@pytest.mark.slow
def test_ablation_sweep_runs_each_job_on_all_ranks(tmp_path: Path) -> None:
    proc = _train(
        tmp_path,
        "ablation=no_grad,no_se",
        "trainer=ddp_cpu",
        "debug=smoke",
        "logger=wandb",
        wandb_mode="offline",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no second sweep folder, no outputs/
    records = read_summary(sweep)
    assert [(r.status, r.processes) for r in records] == [("completed", 2), ("completed", 2)]
    job_dirs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in job_dirs] == ["0", "1"]  # exactly two jobs
    shapes = []
    for job_dir, ablation in zip(job_dirs, ("no_grad", "no_se"), strict=True):
        ranks = _ranks(job_dir)
        assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
        for key in ("config_sha256", "param_shapes_sha256", "final_weights_sha256"):
            assert ranks[0].get(key) == ranks[1].get(key), key  # same config, networks and trained weights
        info = json.loads((job_dir / "run_info.json").read_text())
        assert (info["status"], info["ablation"], info["seed"]) == ("completed", ablation, 0)
        assert info["git_rev"] and info["config_sha256"]
        assert (job_dir / ".hydra" / "config.yaml").is_file() and (job_dir / "train_rank1.log").is_file()
        assert not list(job_dir.glob("train_ddp_process_*.log"))  # Lightning's own launcher never ran
        wandb_cfg = OmegaConf.load(job_dir / "config_resolved.yaml").logger.wandb
        assert wandb_cfg.group == str(sweep) and list(wandb_cfg.tags) == [ablation]  # one group per sweep
        assert len(list((job_dir / "wandb").glob("offline-run-*"))) == 1  # rank 0 only
        shapes.append(ranks[0]["param_shapes_sha256"])
    assert shapes[0] != shapes[1]  # the two jobs really built their own ablation


@pytest.mark.slow
def test_failed_job_is_reported_and_the_other_completes(tmp_path: Path) -> None:
    # se_reduction=16 leaves no SE hidden channel at the smoke width (8): an invalid value for every job
    # that builds SE blocks (no_grad), ignored by no_se, which has none.
    proc = _train(
        tmp_path, "ablation=no_grad,no_se", "trainer=ddp_cpu", *SMOKE, "model.generator.se_reduction=16"
    )
    assert proc.returncode != 0
    assert "1 of 2 sweep jobs failed: #0 (ablation=no_grad" in proc.stderr + proc.stdout
    sweep = tmp_path / "sweep"
    assert [r.status for r in read_summary(sweep)] == ["failed", "completed"]
    infos = {
        json.loads(p.read_text())["ablation"]: json.loads(p.read_text())
        for p in sweep.glob("*/run_info.json")
    }
    assert infos["no_grad"]["status"] == "failed" and "se_reduction" in infos["no_grad"]["error"]
    assert infos["no_se"]["status"] == "completed" and infos["no_se"]["metrics"]

    report_main([str(sweep)])
    markdown = (sweep / "report" / "report.md").read_text()
    assert "Table 1. Gradient branch validity verification (PI)" in markdown
    assert "Table 2. Results of validation of the SE block" in markdown
    table1 = (sweep / "report" / "table1.csv").read_text().splitlines()
    assert any(line.startswith("×,no_grad,failed,psnr") for line in table1)
    table2 = (sweep / "report" / "table2.csv").read_text().splitlines()
    no_se = next(line.split(",") for line in table2 if line.startswith("×,no_se,"))
    assert no_se[2:4] == ["completed", "Sample"] and float(no_se[6]) > 0  # its test PSNR on the sample set
    assert "no job with `ablation=none`" in markdown and "se_reduction" in markdown


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_one_device_job(tmp_path: Path) -> None:
    """hydra/launcher=slurm's code path (rank layout, summary) on submitit's local executor."""
    proc = _train(tmp_path, "hydra/launcher=slurm_local", "trainer=cpu", "ablation=no_se", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = read_summary(tmp_path / "sweep")
    assert record.status == "completed" and "++trainer.devices=1" in record.overrides
    info = json.loads((Path(record.output_dir) / "run_info.json").read_text())
    assert info["status"] == "completed" and info["ablation"] == "no_se"
