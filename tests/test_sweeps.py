"""End-to-end sweeps of `python -m dgggan_pl.train -m ...` on CPU (2-process gloo DDP, tiny widths).

Each test launches the real CLI as a subprocess: Lightning's launchers must never run inside pytest
(docs/design.md#sweeps), and the point is the process layout a user gets.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from dgggan_pl.launch.summary import read_summary
from dgggan_pl.report import main as report_main

SMOKE = ["debug=smoke", "logger=none"]
SWEEP_TIMEOUT_S = 400  # a 2-job 2-rank smoke sweep takes ~1.5 min on 2 busy cores


class Pace(Callback):
    """Makes every training batch last at least `seconds`, so a job's length does not depend on the machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


def _command(tmp_path: Path, *overrides: str, wandb_mode: str = "disabled") -> dict:
    env = {**os.environ, "WANDB_MODE": wandb_mode, "LOCAL_RANK": "0", "MASTER_PORT": "1"}  # leaks to ignore
    env["PYTHONPATH"] = f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # Pace
    argv = [
        sys.executable,
        "-m",
        "dgggan_pl.train",
        "-m",
        *overrides,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    return {"args": argv, "cwd": tmp_path, "env": env, "text": True}


def _train(tmp_path: Path, *overrides: str, wandb_mode: str = "disabled") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        **_command(tmp_path, *overrides, wandb_mode=wandb_mode), capture_output=True, timeout=SWEEP_TIMEOUT_S
    )


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains `text` (torchrun and ranks carry the job folder)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if (
                text in cmdline.read_bytes().decode(errors="replace")
                and "Z" not in (cmdline.parent / "stat").read_text().split(") ", 1)[1][:1]
            ):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _ranks(job_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((job_dir / "ranks").glob("rank*.json"))]


@pytest.mark.slow
def test_ablation_sweep_runs_each_job_on_all_ranks(tmp_path: Path) -> None:
    """Two 2-rank gloo jobs at once (hydra.launcher.parallel_jobs=2): each its own rendezvous port, ranks
    with identical weights, one summary."""
    proc = _train(
        tmp_path,
        "ablation=no_grad,no_se",
        "trainer=ddp_cpu",
        "debug=smoke",
        "logger=wandb",
        "hydra.launcher.parallel_jobs=2",
        wandb_mode="offline",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no second sweep folder, no outputs/
    records = read_summary(sweep)
    assert [(r.status, r.processes) for r in records] == [("completed", 2), ("completed", 2)]
    infos = [json.loads((Path(r.output_dir) / "run_info.json").read_text()) for r in records]
    assert (
        infos[0]["started"] < infos[1]["finished"] and infos[1]["started"] < infos[0]["finished"]
    )  # overlap
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
    # rank 1 of the no_grad job fails mid-run (tests/rank_faults.py); the no_se job is left alone
    fault = "+callbacks.fault={_target_:rank_faults.FailOnRank,rank:1,batch:2,when:${ablation.name},equals:no_grad}"
    proc = _train(tmp_path, "ablation=no_grad,no_se", "trainer=ddp_cpu", *SMOKE, fault)
    assert proc.returncode == 1
    # the sweep's end is one line naming the job and its folder (issue 30 item 4), no traceback
    last = proc.stderr.splitlines()[-1]
    assert (
        last.startswith("error: 1 of 2 sweep jobs failed: #0 (ablation=no_grad")
        and "its log and run_info" in last
    )
    assert "basic_sweeper" not in proc.stderr  # Hydra's sweeper frames: the old traceback
    sweep = tmp_path / "sweep"
    assert [r.status for r in read_summary(sweep)] == ["failed", "completed"]
    infos = {
        json.loads(p.read_text())["ablation"]: json.loads(p.read_text())
        for p in sweep.glob("*/run_info.json")
    }
    cause = "injected failure on rank 1 at batch 2"
    assert infos["no_grad"]["status"] == "failed" and cause in infos["no_grad"]["error"]  # rank 0's record
    assert infos["no_se"]["status"] == "completed" and infos["no_se"]["metrics"]

    report_main([str(sweep)])
    markdown = (sweep / "report" / "report.md").read_text()
    assert "Table 1. Gradient branch validity verification (PI)" in markdown
    assert "Table 2. Results of validation of the SE block" in markdown
    with (sweep / "report" / "table1.csv").open() as handle:
        table1 = list(csv.reader(handle))
    assert any(r[:2] == ["×", "no_grad"] and r[3] == "failed" and r[5] == "psnr" for r in table1)
    with (sweep / "report" / "table2.csv").open() as handle:
        no_se = next(r for r in csv.reader(handle) if r[:2] == ["×", "no_se"])
    assert no_se[3] == "completed" and no_se[5] == "Sample" and float(no_se[8]) > 0  # test PSNR, sample set
    assert no_se[4].startswith("selected")  # which checkpoint the row comes from
    assert "no job with `ablation=none`" in markdown and cause in markdown


@pytest.mark.slow
def test_a_generator_value_no_job_can_build_is_refused_before_any_job_folder(tmp_path: Path) -> None:
    """se_reduction=16 leaves no SE hidden channel at the smoke width (8): the no_grad job (SE blocks) refuses in
    one line before it writes anything, the no_se job (none) completes, and the sweep's line says so."""
    proc = _train(tmp_path, "ablation=no_grad,no_se", *SMOKE, "model.generator.se_reduction=16")
    assert proc.returncode == 1
    refusal = (
        "error: model.generator: se_reduction=16 leaves no hidden channel for channels=8; "
        "set model.generator.se_reduction <= channels"
    )
    assert refusal in proc.stderr.splitlines()
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: 1 of 2 sweep jobs failed: #0 (ablation=no_grad")
    assert "it refused to start and kept no folder: its own error line is in the output above" in last
    sweep = tmp_path / "sweep"
    assert [r.status for r in read_summary(sweep)] == ["failed", "completed"]
    assert [p.name.split("_", 1)[0] for p in sweep.iterdir() if p.is_dir()] == ["1"]  # no_grad kept nothing


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_one_device_job(tmp_path: Path) -> None:
    """hydra/launcher=slurm's code path (rank layout, summary) on submitit's local executor."""
    proc = _train(tmp_path, "hydra/launcher=slurm_local", "trainer=cpu", "ablation=no_se", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = read_summary(tmp_path / "sweep")
    assert record.status == "completed" and "++trainer.devices=1" in record.overrides
    info = json.loads((Path(record.output_dir) / "run_info.json").read_text())
    assert info["status"] == "completed" and info["ablation"] == "no_se"


@pytest.mark.slow
def test_interrupting_a_sweep_leaves_no_rank_behind(tmp_path: Path) -> None:
    """kill -INT of the sweep mid-job: the job's torchrun and both ranks are gone when the sweep exits, the
    summary and the report say interrupted / not started (not failed, not a made-up folder)."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        **_command(tmp_path, "ablation=no_grad,no_se", "trainer=ddp_cpu", *SMOKE, "iterations=100000"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while len(list(sweep.glob("0_*/ranks/rank*.json"))) < 2:  # both ranks are fitting
            assert proc.poll() is None and time.monotonic() < deadline, "the first job never started fitting"
            time.sleep(0.5)
        assert len(_processes_mentioning(str(sweep))) >= 3  # torchrun + 2 ranks
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:  # a failed assertion must not leave the sweep training
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGINT, stderr[-3000:]
    assert _processes_mentioning(str(sweep)) == []
    records = read_summary(sweep)
    assert [r.status for r in records] == ["interrupted", "not started"]
    report_main([str(sweep)])
    jobs = list(csv.reader((sweep / "report" / "jobs.csv").open()))
    assert [r[6] for r in jobs[1:]] == ["interrupted", "not started"]


@pytest.mark.slow
def test_mission_command_and_report_with_a_baseline(tmp_path: Path) -> None:
    """`-m ablation=no_grad,no_se` with the default trainer: one process per job on a CPU-only machine, the
    typed Hydra override reaches the jobs; the report is strict about the missing full model until a
    separate full-model run is given with --baseline, then both tables are filled."""
    proc = _train(tmp_path, "ablation=no_grad,no_se", *SMOKE, "+hydra.job.env_set.DGGGAN_SWEEP_FLAG=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "sweep"
    records = read_summary(sweep)
    assert [(r.status, r.processes) for r in records] == [("completed", 1), ("completed", 1)]
    for record in records:
        hydra_cfg = OmegaConf.load(Path(record.output_dir) / ".hydra" / "hydra.yaml").hydra
        assert "+hydra.job.env_set.DGGGAN_SWEEP_FLAG=1" in hydra_cfg.overrides.hydra
        assert str(hydra_cfg.job.env_set.DGGGAN_SWEEP_FLAG) == "1"  # environment values are strings
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--strict"])
    assert exit_info.value.code == 1
    baseline = tmp_path / "baseline"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = subprocess.run(
        [sys.executable, "-m", "dgggan_pl.train", *SMOKE, f"hydra.run.dir={baseline}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report_main([str(sweep), "--baseline", str(baseline), "--strict"])  # exit 0: every row filled
    with (sweep / "report" / "table1.csv").open() as handle:
        psnr = {r[1]: r for r in csv.reader(handle) if r[5] == "psnr"}
    assert psnr["none"][3] == psnr["no_grad"][3] == "completed" and float(psnr["none"][6]) > 0


@pytest.mark.slow
def test_requeued_slurm_job_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """hydra/launcher=slurm_local with timeout_min=1: submitit signals USR2 15 s before the limit (the job must
    finish a batch, log it and exit within that: the local executor kills it at the limit), the job saves
    last.ckpt at the next batch end and is requeued with ckpt_path=last; it continues the iteration count
    (Lightning restores that checkpoint) and finishes with every iteration done exactly once.

    Paced to >= 0.25 s per iteration (about 60 s of training): on an idle machine the first attempt is
    signalled after ~35 s of it. A job still unpickling when signalled dies (submitit installs its handler
    only after loading), so a machine must start a job in well under 45 s for this test.
    """
    iterations = 240
    proc = _train(
        tmp_path,
        "hydra/launcher=slurm_local",
        "trainer=cpu",
        "ablation=no_se",
        *SMOKE,
        f"iterations={iterations}",
        f"trainer.val_check_interval={iterations}",
        "+callbacks.pace={_target_:test_sweeps.Pace,seconds:0.25}",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=15",
        "hydra.launcher.max_num_timeout=8",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = read_summary(tmp_path / "sweep")
    job_dir = Path(record.output_dir)
    info = json.loads((job_dir / "run_info.json").read_text())
    assert record.status == "completed" and info["status"] == "completed"
    log_text = "".join(p.read_text() for p in job_dir.glob("*.log"))
    submitit_log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob("*/*_log.*"))
    assert "Requeued job" in submitit_log  # at least one timeout happened while fitting
    saved = [
        int(line.rsplit("optimizer step ", 1)[1].split(";")[0])
        for line in log_text.splitlines()
        if "at optimizer step" in line
    ]
    assert saved and saved[0] > 0  # the first attempt had trained when it was signalled
    assert "Restored all states from the checkpoint" in log_text + submitit_log
    assert info["checkpoints"]["last"]["iteration"] == iterations  # finished, counting on from the checkpoint
    assert not list(
        (job_dir / "checkpoints").glob("last-v*.ckpt")
    )  # the final last.ckpt replaced the requeue one
