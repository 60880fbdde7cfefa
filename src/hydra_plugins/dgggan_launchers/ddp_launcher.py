"""`hydra/launcher=ddp`: run each sweep job as a fresh process group on this machine (see docs/sweeps.md).

Lightning's own subprocess launcher re-runs the parent's whole `-m` sweep in every child rank and pairs
ranks with jobs through leaked `LOCAL_RANK` state. Here the parent only composes each job's config, then
starts `torch.distributed.run --standalone` (or the plain app for one process) with that job's overrides in
Hydra RUN mode. Every job therefore gets new processes, a new rendezvous port and a clean environment.
The process handling (signals, concurrent jobs) is `dgggan_pl.launch.runner`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dgggan_pl.launch.commands import (
    TRAINER_DEFAULTS,
    AppTarget,
    clean_env,
    current_app,
    forwarded_hydra_overrides,
    job_command,
    process_count,
    select_trainer_value,
    with_wandb_group,
)
from dgggan_pl.launch.compose import job_config
from dgggan_pl.launch.devices import device_changes, gpu_slots, visible_gpu_ids
from dgggan_pl.launch.runner import JobRunner, PreparedJob, exit_by_signal
from dgggan_pl.launch.summary import (
    COMPLETED,
    FAILED,
    JobRecord,
    failures,
    write_summary,
)

log = logging.getLogger(__name__)


class DDPLauncher(Launcher):
    """Sweep jobs as fresh process groups, one after another or `parallel_jobs` at a time."""

    def __init__(
        self,
        devices_key: str,
        num_nodes_key: str,
        accelerator_key: str,
        strategy_key: str,
        wandb_group_key: str | None,
        wandb_group: str | None,
        all_gpus: bool = True,
        ddp_strategy: str = "ddp_step_sync",
        gpus_per_job: int | None = None,
        parallel_jobs: int | None = None,
        kill_grace_s: float = 45.0,
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
        self.all_gpus, self.ddp_strategy = all_gpus, ddp_strategy
        self.gpus_per_job, self.parallel_jobs = gpus_per_job, parallel_jobs
        self.kill_grace_s = kill_grace_s
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
        import torch  # imported here: plugin discovery must stay cheap

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        cuda_count = torch.cuda.device_count()
        slots = gpu_slots(self.gpus_per_job, self.parallel_jobs, visible_gpu_ids(os.environ, cuda_count))
        when = "one after another" if len(slots) == 1 else f"up to {len(slots)} at a time"
        log.info(f"Launching {len(job_overrides)} jobs, {when}, each as fresh processes")
        jobs = [JobRecord(num=initial_job_idx + i, overrides=list(o)) for i, o in enumerate(job_overrides)]
        self.jobs += jobs
        returns = {job.num: JobReturn(overrides=job.overrides, status=JobStatus.FAILED) for job in jobs}
        prepared = []
        for job in jobs:
            log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
            command = self._prepare(job, returns[job.num], cuda_count)
            if command is not None:
                prepared.append(PreparedJob(job, command))

        def save() -> None:
            write_summary(sweep_dir, "ddp", self.jobs)

        save()
        runner = JobRunner(slots, clean_env(os.environ), save, grace_s=self.kill_grace_s)
        signum = runner.run(prepared)
        for job in jobs:
            self._fill_return(job, returns[job.num])
        self._report(jobs)
        if signum is not None:
            exit_by_signal(signum)
        error = failures(self.jobs, sweep_dir)
        if error is not None:
            raise error
        return [returns[job.num] for job in jobs]

    def _prepare(self, job: JobRecord, ret: JobReturn, cuda_count: int) -> list[str] | None:
        """Compose one job and build its command; a job that cannot be composed fails alone."""
        try:
            # set by setup(), which Hydra calls before launch()
            context, config = cast(HydraContext, self.hydra_context), cast(DictConfig, self.config)
            sweep_config = job_config(context, config, job.overrides, job.num)
            ret.cfg, ret.hydra_cfg = _split_config(sweep_config)
            job.output_dir = str(Path(str(sweep_config.hydra.runtime.output_dir)))
            trainer = self._trainer_values(sweep_config)
            changes = device_changes(
                job.overrides,
                trainer,
                cuda_count,
                keys=self.keys,
                all_gpus=self.all_gpus,
                gpus_per_job=self.gpus_per_job,
                ddp_strategy=self.ddp_strategy,
            )
            trainer |= changes
            extra = [f"++{self.keys[name]}={value}" for name, value in changes.items()]
            job.processes = process_count(
                trainer["devices"], trainer["accelerator"], trainer["strategy"], cuda_count
            )
            overrides = with_wandb_group(
                [*job.overrides, *extra], sweep_config, self.wandb_group_key, self.wandb_group
            )
            hydra_overrides = forwarded_hydra_overrides(list(config.hydra.overrides.hydra))
            job.command = job_command(
                cast(AppTarget, self.app),
                [*hydra_overrides, *overrides],
                Path(job.output_dir),
                job.num,
                job.processes,
            )
        except Exception as err:  # a bad override fails this job only
            job.status, job.error = FAILED, f"config: {type(err).__name__}: {err}"
            log.error(f"#{job.num} could not be composed: {job.error}")
            ret.return_value = err
            return None
        return job.command

    def _fill_return(self, job: JobRecord, ret: JobReturn) -> None:
        if ret.hydra_cfg is None:  # not composed: its error is already the return value
            return
        ret.working_dir = os.getcwd()
        if job.status == COMPLETED:
            ret.status, ret.return_value = JobStatus.COMPLETED, {"output_dir": job.output_dir}
        else:
            ret.return_value = RuntimeError(f"job {job.label()} {job.status}: {job.error}")

    def _trainer_values(self, cfg: DictConfig) -> dict[str, object]:
        """The job's devices/num_nodes/accelerator/strategy; several nodes are refused (use slurm)."""
        value = {
            name: select_trainer_value(cfg, key, TRAINER_DEFAULTS[name]) for name, key in self.keys.items()
        }
        if value["num_nodes"] != 1:
            raise ValueError(
                f"{self.keys['num_nodes']}={value['num_nodes']}: hydra/launcher=ddp runs on this machine only; "
                "use hydra/launcher=slurm for several nodes"
            )
        return value

    def _report(self, jobs: list[JobRecord]) -> None:
        """One line per job; the sweep's error (`failures`) then names every job that did not complete."""
        for job in jobs:
            log.info(f"#{job.num} {job.status:11s} {job.seconds or 0:7.1f} s  {job.output_dir or '-'}")


def _split_config(sweep_config: DictConfig) -> tuple[DictConfig, DictConfig]:
    """(task config without `hydra`, `hydra` node) as `JobReturn` carries them."""
    task_cfg = sweep_config.copy()
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(sweep_config.hydra, resolve=False)})
    return task_cfg, hydra_cfg
