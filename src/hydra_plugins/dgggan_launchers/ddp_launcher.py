"""`hydra/launcher=ddp`: run each sweep job as a fresh process group on this machine (see docs/sweeps.md).

Lightning's own subprocess launcher re-runs the parent's whole `-m` sweep in every child rank and pairs
ranks with jobs through leaked `LOCAL_RANK` state. Here the parent only composes each job's config, then
starts `torch.distributed.run --standalone` (or the plain app for one process) with that job's overrides in
Hydra RUN mode. Every job therefore gets new processes, a new rendezvous port and a clean environment.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dgggan_pl.launch.commands import (
    TRAINER_DEFAULTS,
    AppTarget,
    clean_env,
    current_app,
    job_command,
    process_count,
    select_trainer_value,
    with_wandb_group,
)
from dgggan_pl.launch.summary import JobRecord, write_summary

log = logging.getLogger(__name__)


class SweepJobsFailed(RuntimeError):
    """Raised (through Hydra's sweeper) after all jobs ran, when at least one of them failed."""


class DDPLauncher(Launcher):
    """Sequential sweep jobs, each on `trainer.devices` fresh processes; see the module docstring."""

    def __init__(
        self,
        devices_key: str,
        num_nodes_key: str,
        accelerator_key: str,
        strategy_key: str,
        wandb_group_key: str | None,
        wandb_group: str | None,
    ) -> None:
        super().__init__()
        self.keys = {
            "devices": devices_key,
            "num_nodes": num_nodes_key,
            "accelerator": accelerator_key,
            "strategy": strategy_key,
        }
        self.wandb_group_key = wandb_group_key
        self.wandb_group = wandb_group
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.app: AppTarget | None = None
        self.jobs: list[JobRecord] = []  # every job of the sweep (a sweeper may launch in several batches)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.app = current_app()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None, "setup() was not called"
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, one after another, each as fresh processes")
        jobs = [JobRecord(num=initial_job_idx + i, overrides=list(o)) for i, o in enumerate(job_overrides)]
        self.jobs += jobs
        returns = []
        for job in jobs:
            log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
            returns.append(self._run_one(job, sweep_dir))
            write_summary(sweep_dir, "ddp", self.jobs)
        self._report(jobs, sweep_dir, returns)
        return returns

    def _run_one(self, job: JobRecord, sweep_dir: Path) -> JobReturn:
        """Compose, start and wait for one job; any failure is recorded on `job`, never raised."""
        ret = JobReturn(overrides=job.overrides, status=JobStatus.FAILED)
        start = time.monotonic()
        try:
            sweep_config = self._job_config(job)
            ret.cfg, ret.hydra_cfg = _split_config(sweep_config)
            job.output_dir = str(Path(str(sweep_config.hydra.runtime.output_dir)))
            job.processes = self._process_count(sweep_config)
            job.command = job_command(
                self.app,
                self._child_overrides(job, sweep_config),
                Path(job.output_dir),
                job.num,
                job.processes,
            )
        except Exception as err:  # a bad override fails this job only
            job.status, job.error = "failed", f"config: {type(err).__name__}: {err}"
            log.error(f"#{job.num} could not be composed: {job.error}")
            ret.return_value = err
            return ret
        job.status = "running"
        write_summary(sweep_dir, "ddp", self.jobs)
        log.info(f"#{job.num} on {job.processes} process(es): {' '.join(job.command)}")
        job.returncode = subprocess.run(job.command, env=clean_env(os.environ), check=False).returncode
        job.seconds = round(time.monotonic() - start, 1)
        job.status = "completed" if job.returncode == 0 else "failed"
        ret.working_dir = os.getcwd()
        if job.returncode == 0:
            ret.status, ret.return_value = JobStatus.COMPLETED, {"output_dir": job.output_dir}
        else:
            job.error = f"exit code {job.returncode}; see {job.output_dir}"
            ret.return_value = SweepJobsFailed(f"job {job.label()} failed: {job.error}")
        return ret

    def _job_config(self, job: JobRecord) -> DictConfig:
        """The job's full config with `hydra.runtime.output_dir` = `<sweep.dir>/<sweep.subdir>`."""
        assert self.config is not None and self.hydra_context is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{job.num}"
            sweep_config.hydra.job.num = job.num
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)  # `${hydra:...}` in sweep.subdir needs it
        try:
            subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
            output_dir = Path(str(sweep_config.hydra.sweep.dir), subdir).absolute()
        finally:
            HydraConfig.instance().cfg = saved
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(output_dir)
        return sweep_config

    def _process_count(self, cfg: DictConfig) -> int:
        value = {
            name: select_trainer_value(cfg, key, TRAINER_DEFAULTS[name]) for name, key in self.keys.items()
        }
        if value["num_nodes"] != 1:
            raise ValueError(
                f"{self.keys['num_nodes']}={value['num_nodes']}: hydra/launcher=ddp runs on this machine only; "
                "use hydra/launcher=slurm for several nodes"
            )
        import torch  # imported here: plugin discovery must stay cheap

        return process_count(
            value["devices"], value["accelerator"], value["strategy"], torch.cuda.device_count()
        )

    def _child_overrides(self, job: JobRecord, cfg: DictConfig) -> list[str]:
        """The job's overrides, plus the sweep's W&B group when the job logs to W&B and sets none itself."""
        return with_wandb_group(job.overrides, cfg, self.wandb_group_key, self.wandb_group)

    def _report(self, jobs: list[JobRecord], sweep_dir: Path, returns: list[JobReturn]) -> None:
        """Log one line per job, then name every failure in the sweep's error."""
        for job in jobs:
            log.info(f"#{job.num} {job.status:9s} {job.seconds or 0:7.1f} s  {job.output_dir or '-'}")
        mark_failures(jobs, returns, sweep_dir)


def mark_failures(jobs: list[JobRecord], returns: Sequence[JobReturn], sweep_dir: Path) -> None:
    """Make every failed job's return value name all failures: Hydra's sweeper raises the first one it
    reads, after all jobs ran, and the sweep then exits non-zero with this message."""
    failed = [job for job in jobs if job.status != "completed"]
    if not failed:
        return
    message = (
        f"{len(failed)} of {len(jobs)} sweep jobs failed: "
        + "; ".join(f"{job.label()}: {job.error}" for job in failed)
        + f". Summary: {sweep_dir / 'sweep_summary.json'}"
    )
    log.error(message)
    for ret in returns:
        if ret.status == JobStatus.FAILED:
            ret.return_value = SweepJobsFailed(message)


def _split_config(sweep_config: DictConfig) -> tuple[DictConfig, DictConfig]:
    """(task config without `hydra`, `hydra` node) as `JobReturn` carries them."""
    task_cfg = sweep_config.copy()
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(sweep_config.hydra, resolve=False)})
    return task_cfg, hydra_cfg
