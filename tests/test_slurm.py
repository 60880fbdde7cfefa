"""hydra/launcher=slurm: what submitit would be given (sbatch text), and the rank layout set on each job.

No SLURM here: a stand-in `srun` on PATH only lets submitit pick its SLURM executor; nothing is submitted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.config import config_dir
from dgggan_pl.launch import slurm_queue
from dgggan_pl.launch.summary import JobRecord, SweepError, failures
from dgggan_pl.runs import register_resolvers
from dgggan_pl.sweep_results import job_result
from hydra_plugins.dgggan_launchers.slurm_launcher import SlurmDDPLauncher

LAYOUT = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4", "hydra.launcher.partition=gpu"]


@pytest.fixture
def fake_srun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `srun` on PATH, so that submitit builds its SLURM executor (it checks `which srun`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _hydra_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    setup_globals()  # registers `now`, used by hydra.sweep.dir
    register_resolvers()  # conf/hydra's run folder and job name (as importing dgggan_pl.train does)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)  # `${hydra.job.name}` in the launcher config
    return cfg


@pytest.fixture
def launcher(tmp_path: Path, fake_srun: None) -> Iterator[SlurmDDPLauncher]:
    cfg = _hydra_config(tmp_path, LAYOUT)
    launcher = instantiate(cfg.hydra.launcher)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    context = HydraContext(config_loader=loader, callbacks=Callbacks())
    launcher.setup(hydra_context=context, task_function=lambda _: None, config=cfg)
    yield launcher
    HydraConfig.instance().cfg = None


def sbatch_directives(script: str) -> dict[str, str]:
    """A batch script's `#SBATCH --option[=value]` lines as sbatch reads them: option -> value, up to the first
    command (later `#SBATCH` lines are plain comments to sbatch)."""
    directives = {}
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH "):
            option, _, value = line.removeprefix("#SBATCH ").split(" #", 1)[0].strip().partition("=")
            directives[option] = value
    return directives


def _sbatch(launcher: SlurmDDPLauncher, job_cfgs: list[DictConfig]) -> str:
    launcher.resolve_gpus(job_cfgs)
    return launcher.make_executor()._executor._make_submission_file_text(command="python -m x", uid="u")


def test_sbatch_parameters(launcher: SlurmDDPLauncher) -> None:
    assert type(launcher).__name__ == "SlurmDDPLauncher"  # Hydra's plugin scan loads its own module copy
    sbatch = _sbatch(launcher, [launcher.config])  # trainer.accelerator=auto: one GPU per task
    expected = {
        "--nodes": "2",
        "--ntasks-per-node": "4",
        "--gpus-per-node": "4",
        "--partition": "gpu",
        "--time": "4320",
        "--cpus-per-task": "8",
        "--signal": "USR2@120",
    }
    directives = sbatch_directives(sbatch)
    assert {key: directives.get(key) for key in expected} == expected, sbatch
    assert "srun" in sbatch


SBATCH_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sbatch_train.sh"


def test_sbatch_script_requeues_and_sizes_the_trainer_from_the_allocation(tmp_path: Path) -> None:
    """scripts/sbatch_train.sh (docs/sweeps.md): its directives ask for the requeue signal and allow requeueing,
    and the Trainer's layout comes from the allocation, for one node or several (run here with a stand-in
    `srun` that prints what it was given)."""
    directives = sbatch_directives(SBATCH_SCRIPT.read_text())
    assert directives["--signal"] == "USR2@120" and "--requeue" in directives
    assert directives["--ntasks-per-node"] == directives["--gpus-per-node"] == "1"  # one rank per GPU
    assert directives["--open-mode"] == "append" and "--array" not in directives
    (tmp_path / "srun").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "DGGGAN_PYTHON": "py"}
    for nodes, tasks, layout in [
        ("1", "1", "trainer.num_nodes=1 trainer.devices=1"),
        ("4", "32", "trainer.num_nodes=4 trainer.devices=8"),
    ]:
        job = {**env, "SLURM_JOB_NUM_NODES": nodes, "SLURM_NTASKS": tasks}
        ran = subprocess.run(
            ["bash", str(SBATCH_SCRIPT), "experiment=full"], env=job, capture_output=True, text=True
        )
        assert ran.stdout.split() == [
            "--kill-on-bad-exit=1",
            "py",
            "-m",
            "dgggan_pl.train",
            *layout.split(),
            "experiment=full",
        ]
    outside = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=env, capture_output=True, text=True)
    assert outside.returncode != 0 and "run this script with sbatch" in outside.stderr


def test_jobs_get_the_launcher_rank_layout(launcher: SlurmDDPLauncher) -> None:
    overrides = launcher.job_overrides(["ablation=no_grad"])
    assert overrides[:3] == ["ablation=no_grad", "++trainer.num_nodes=2", "++trainer.devices=4"]
    job_cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    assert (job_cfg.trainer.num_nodes, job_cfg.trainer.devices) == (2, 4)
    if OmegaConf.select(job_cfg, "logger.wandb") is not None:
        assert job_cfg.logger.wandb.group == str(launcher.config.hydra.sweep.dir)


@pytest.mark.parametrize(
    ("override", "replacement"),
    [
        ("trainer.devices=2", "hydra.launcher.tasks_per_node=2"),
        ("++trainer.num_nodes=3", "hydra.launcher.nodes=3"),
    ],
)
def test_overriding_the_layout_in_the_trainer_is_refused(
    launcher: SlurmDDPLauncher, override: str, replacement: str
) -> None:
    """The trainer's layout is derived from the launcher keys; typing it names the launcher key to set."""
    with pytest.raises(SweepError, match=f"set {re.escape(replacement)} instead") as refusal:
        launcher.job_overrides([override])
    assert _one_line(refusal.value).startswith(f"error: {override}: ")


def test_gpus_per_node_must_match_tasks(tmp_path: Path, fake_srun: None) -> None:
    cfg = _hydra_config(tmp_path, [*LAYOUT, "hydra.launcher.gpus_per_node=8"])
    with pytest.raises(SweepError, match="one DDP rank"):
        instantiate(cfg.hydra.launcher).check_layout()
    HydraConfig.instance().cfg = None


def _one_line(error: SweepError) -> str:
    """The exit message Python prints for the refusal: exactly one line."""
    assert isinstance(error.code, str) and "\n" not in error.code
    return error.code


def _launch(tmp_path: Path, overrides: list[str]) -> SweepError:
    """launch() of a one-job sweep with `overrides` on the launcher; the refusal it raises (fails if none)."""
    cfg = _hydra_config(tmp_path, overrides)
    launcher = instantiate(cfg.hydra.launcher)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    launcher.setup(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()),
        task_function=lambda _: None,
        config=cfg,
    )
    try:
        with pytest.raises(SweepError) as refusal:
            launcher.launch([["ablation=no_se"]], initial_job_idx=0)
    finally:
        HydraConfig.instance().cfg = None
    return refusal.value


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("nodes=0", "hydra.launcher.nodes=0: must be a whole number >= 1"),
        ("tasks_per_node=-2", "hydra.launcher.tasks_per_node=-2: must be a whole number >= 1"),
        ("nodes=two", "hydra.launcher.nodes=two: must be a whole number >= 1"),
        ("cpus_per_task=0", "hydra.launcher.cpus_per_task=0: must be a whole number >= 1"),
        ("gpus_per_node=-1", "hydra.launcher.gpus_per_node=-1: must be auto, null or a whole number >= 0"),
        (
            "timeout_min=2",
            "hydra.launcher.signal_delay_s=120: the requeue signal must come before the time limit",
        ),
    ],
)
def test_launcher_keys_are_checked_before_submission(
    tmp_path: Path, fake_srun: None, override: str, expected: str
) -> None:
    """Values SLURM would refuse (or misread) after submission: one line naming the key, nothing left behind."""
    refusal = _launch(tmp_path, [f"hydra.launcher.{override}"])
    assert _one_line(refusal).startswith(f"error: {expected}")
    assert not (tmp_path / "sweep").exists()


def test_no_slurm_commands_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on a SLURM machine (no sbatch/srun): one line saying where to run it, before anything is composed."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    refusal = _launch(tmp_path, [])
    assert "sbatch and srun are not on PATH here" in _one_line(refusal)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("sbatch_says", "advice"),
    [
        (
            "sbatch: fatal: Could not establish a configuration source",
            "SLURM is not configured on this machine",
        ),
        (
            "sbatch: error: Batch job submission failed: Requested node configuration is not available",
            "hydra.launcher's partition=None, nodes=2, tasks_per_node=1",
        ),
    ],
)
def test_sbatch_refusal_is_one_line(tmp_path: Path, fake_srun: None, sbatch_says: str, advice: str) -> None:
    """sbatch refuses the array (no slurm.conf; a layout no node has): its own reason and what to check, in
    one line, instead of submitit's FailedJobError with sbatch's whole stderr."""
    sbatch = Path(shutil.which("srun") or "").with_name("sbatch")
    sbatch.write_text(
        f"#!/bin/sh\necho 'sbatch: error: first of several lines' >&2\necho '{sbatch_says}' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    refusal = _launch(tmp_path, ["hydra.launcher.nodes=2", "trainer=cpu"])
    line = _one_line(refusal)
    assert line.startswith(f"error: sbatch refused the sweep's jobs ({sbatch_says}); ") and advice in line
    assert not (tmp_path / "sweep").exists()  # nothing was submitted: no sweep folder is left


def test_a_cpu_trainer_asks_for_no_gpus(launcher: SlurmDDPLauncher) -> None:
    """A CPU-only cluster refuses any --gpus-per-node (`Invalid generic resource (gres) specification`)."""
    cpu = OmegaConf.merge(launcher.config, {"trainer": {"accelerator": "cpu"}})
    assert "--gpus-per-node" not in _sbatch(launcher, [cpu, cpu])
    assert "#SBATCH --ntasks-per-node=4" in _sbatch(launcher, [cpu])


def test_one_array_cannot_mix_cpu_and_gpu_trainers(launcher: SlurmDDPLauncher) -> None:
    cpu = OmegaConf.merge(launcher.config, {"trainer": {"accelerator": "cpu"}})
    with pytest.raises(SweepError, match=r"trainer\.accelerator=auto,cpu.*hydra\.launcher\.gpus_per_node"):
        launcher.resolve_gpus([launcher.config, cpu])


def test_queue_and_accounting_output_parsing() -> None:
    queue = slurm_queue.parse_squeue("12_0|RUNNING|None\n12_1|PENDING|BeginTime\nnoise\n")
    assert queue["12_1"] == slurm_queue.QueueEntry("12_1", "PENDING", "BeginTime") and len(queue) == 2
    assert slurm_queue.array_ids(["12_0", "12_1", "13"]) == ["12", "13"]
    records = slurm_queue.parse_sacct("12_0|COMPLETED|0:0|41\n12_1|CANCELLED by 0|0:15|7\n13|RUNNING|0:0|\n")
    assert records["12_0"] == slurm_queue.Accounting("COMPLETED", 0, 41.0)
    assert records["12_1"] == slurm_queue.Accounting("CANCELLED", 128 + 15, 7.0)  # killed by SIGTERM
    assert records["13"].seconds is None
    steps = slurm_queue.parse_sacct(
        "9|CANCELLED by 0|0:0|23\n9.batch|CANCELLED|0:15|23\n9.0|FAILED|143:0|22\n"
    )
    assert slurm_queue.job_end("9", steps) == slurm_queue.Accounting("CANCELLED", 143, 23.0)  # step's status
    assert slurm_queue.job_end("8", steps) is None


def test_a_job_that_can_never_start_names_the_key_to_change() -> None:
    params = {"cpus_per_task": 8, "tasks_per_node": 1, "mem_gb": None, "partition": "debug"}
    reasons = ["PartitionConfig"]
    pending = slurm_queue.QueueEntry("5_0", "PENDING", "PartitionConfig")
    advice = slurm_queue.never_starting_advice(pending, params, {"cpus": 2, "memory_mb": 8000}, reasons)
    assert advice is not None and "Reason=PartitionConfig" in advice
    assert "lower hydra.launcher.cpus_per_task" in advice and "has 2" in advice
    waiting = slurm_queue.QueueEntry("5_0", "PENDING", "Resources")  # clears when other jobs end
    assert slurm_queue.never_starting_advice(waiting, params, {"cpus": 2}, reasons) is None
    big_memory = {**params, "cpus_per_task": 1, "mem_gb": 64}
    advice = slurm_queue.never_starting_advice(pending, big_memory, {"cpus": 2, "memory_mb": 8000}, reasons)
    assert advice is not None and "lower hydra.launcher.mem_gb" in advice
    limits = slurm_queue.parse_sinfo("4|8000|1\n64+|512000|2\nnoise\n")
    assert limits == {"cpus": 64, "memory_mb": 512000, "nodes": 3}
    two_nodes = {**params, "cpus_per_task": 1, "nodes": 4}
    advice = slurm_queue.never_starting_advice(pending, two_nodes, limits, reasons)
    assert (
        advice is not None
        and "hydra.launcher.nodes=4 but debug has 3 node(s): lower hydra.launcher.nodes" in advice
    )


def test_requeued_and_cancelled_jobs_in_the_report(tmp_path: Path) -> None:
    """run_info `requeued` (waiting to resume) is incomplete, not failed; a SLURM job recorded cancelled or lost
    by the launcher is a failed row whose error names the job."""
    waiting = tmp_path / "0_waiting"
    waiting.mkdir()
    info = {"status": "requeued", "ablation": "no_se", "error": "waiting to be requeued: SIGTERM received"}
    (waiting / "run_info.json").write_text(json.dumps(info))
    record = JobRecord(num=0, overrides=["ablation=no_se"], output_dir=str(waiting), status="submitted")
    result = job_result(waiting, record)
    assert result.status == "incomplete" and "requeued by SLURM" in (result.error or "")
    gone = JobRecord(
        num=1, overrides=["ablation=no_grad"], status="cancelled", error="SLURM job 7_1 was cancelled"
    )
    result = job_result(None, gone)
    assert result.status == "failed" and "7_1" in (result.error or "")


def test_the_sweep_error_is_one_line(tmp_path: Path) -> None:
    """A failed job's error may span lines (Hydra's InstantiationException) or hold a whole stderr (submitit):
    the sweep's error stays one line; sweep_summary.json keeps every job's error in full."""
    jobs = [
        JobRecord(num=0, overrides=["a=1"], status="completed"),
        JobRecord(
            num=1, overrides=["a=2"], status="failed", error="Error in call to target:\nValueError('bad')"
        ),
        JobRecord(num=2, overrides=["a=3"], status="cancelled", error="x" * 1000),
    ]
    error = failures(jobs, tmp_path)
    assert error is not None and failures(jobs[:1], tmp_path) is None
    assert error.code == (
        "error: 2 of 3 sweep jobs failed: #1 (a=2): Error in call to target: ValueError('bad'); "
        f"#2 (a=3): {'x' * 396} .... Each job's status, folder and exit code: {tmp_path / 'sweep_summary.json'}"
    )
