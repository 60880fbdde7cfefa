"""`hydra/launcher=slurm`: each sweep job is one SLURM job whose tasks are Lightning's DDP ranks.

hydra-submitit-launcher submits each job with `--nodes` and `--ntasks-per-node`; submitit's `srun` starts
one task per GPU, and Lightning's `SLURMEnvironment` reads the ranks from SLURM. What this subclass adds:
`trainer.num_nodes`/`trainer.devices` are set from the same launcher keys (so the two can never disagree),
only rank 0 writes `.hydra/`, one W&B group per sweep, a `sweep_summary.json` written at submission (job ids,
folders) and after each collected job, a sweep-level error naming every failed job, as `hydra/launcher=ddp`
does; and a timed-out or preempted job saves last.ckpt and resumes from it when requeued
(`dgggan_pl.launch.requeue`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from dgggan_pl.launch.commands import with_wandb_group
from dgggan_pl.launch.compose import job_config
from dgggan_pl.launch.rank_entry import rank_overrides
from dgggan_pl.launch.requeue import CALLBACK_OVERRIDE, install_deferred_handler, resume_overrides
from dgggan_pl.launch.summary import COMPLETED, FAILED, SUBMITTED, JobRecord, mark_failures, write_summary
from dgggan_pl.runs import last_checkpoint

log = logging.getLogger(__name__)

INIT_KEYS = {"submitit_folder", "max_num_timeout"}  # AutoExecutor(...) arguments, not job parameters


class SubmititDDPLauncher(BaseSubmititLauncher):
    """Submitit launcher whose tasks are DDP ranks; `_EXECUTOR` picks slurm or local (tests)."""

    def __init__(
        self,
        num_nodes_key: str,
        devices_key: str,
        wandb_group_key: str | None,
        wandb_group: str | None,
        **params: Any,
    ) -> None:
        self.poll_s = float(params.pop("poll_s", 10.0))  # how often finished jobs are collected
        super().__init__(**params)
        self.layout_keys = {num_nodes_key: self.params["nodes"], devices_key: self.params["tasks_per_node"]}
        self.wandb_group_key = wandb_group_key
        self.wandb_group = wandb_group
        self.jobs: list[JobRecord] = []  # every job of the sweep (a sweeper may launch in several batches)

    def check_layout(self) -> None:
        """One task per device: gpus_per_node (when set) must equal tasks_per_node."""
        gpus, tasks = self.params.get("gpus_per_node"), self.params["tasks_per_node"]
        if gpus and gpus != tasks:
            raise ValueError(
                f"hydra.launcher.gpus_per_node={gpus} but tasks_per_node={tasks}: Lightning runs one DDP rank "
                "(SLURM task) per GPU; set both to the number of GPUs per node"
            )

    def job_overrides(self, overrides: Sequence[str]) -> list[str]:
        """The job's overrides plus the rank layout (`trainer.num_nodes`, `trainer.devices`), the requeue
        checkpoint callback and the W&B group."""
        assert self.config is not None and self.hydra_context is not None
        for key in self.layout_keys:
            if any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides):
                raise ValueError(
                    f"{key} is set from hydra.launcher.nodes / hydra.launcher.tasks_per_node under "
                    f"hydra/launcher=slurm; drop the {key}=... override and set the launcher key instead"
                )
        layout = [f"++{key}={value}" for key, value in self.layout_keys.items()]  # ++: add or override
        added = [*overrides, *layout, CALLBACK_OVERRIDE]
        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, added)
        return with_wandb_group(added, job_cfg, self.wandb_group_key, self.wandb_group)

    def make_executor(self) -> Any:
        """The submitit AutoExecutor with this launcher's parameters (what `sbatch` will be given)."""
        import submitit  # lazy: plugin discovery must stay cheap

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        valid = type(executor._executor)._valid_parameters()
        params = {key: value for key, value in self.params.items() if key not in INIT_KEYS}
        executor.update_parameters(
            **{
                (key if key in generic else f"{self._EXECUTOR}_{key}"): value
                for key, value in params.items()
                if key in generic or key in valid
            }
        )
        # What AutoExecutor does not pass on although the executor takes it (the local one's signal_delay_s).
        executor._executor.update_parameters(
            **{key: value for key, value in params.items() if key not in generic and key not in valid}
        )
        return executor

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """Runs inside each SLURM task: ranks > 0 neither write `.hydra/` nor share rank 0's log file, and
        submitit's requeue signal waits for last.ckpt while the Trainer fits."""
        import submitit

        environment = submitit.JobEnvironment()
        install_deferred_handler(environment._usr_sig())
        assert self.config is not None
        extra = rank_overrides(str(self.config.hydra.job.name), environment.global_rank)
        return super().__call__([*sweep_overrides, *extra], job_dir_key, job_num, job_id, singleton_state)

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue (in the job, rank 0): the same job, resuming from its last.ckpt if it has one."""
        import submitit
        from hydra.core.hydra_config import HydraConfig

        last = last_checkpoint(HydraConfig.get().runtime.output_dir)
        overrides = resume_overrides(sweep_overrides, last.is_file())
        log.warning(f"requeueing with {overrides[-1] if last.is_file() else 'no checkpoint yet'}")
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        self.check_layout()
        executor = self.make_executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            job = JobRecord(num=initial_job_idx + i, overrides=self.job_overrides(overrides))
            job.output_dir = str(
                job_config(self.hydra_context, self.config, job.overrides, job.num).hydra.runtime.output_dir
            )
            job.processes = self.params["nodes"] * self.params["tasks_per_node"]
            log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
            jobs.append(job)
        self.jobs += jobs
        state = Singleton.get_state()
        calls = [(job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", state) for job in jobs]
        submitted = executor.map_array(self, *zip(*calls, strict=True))  # one array job per sweep
        for job, handle in zip(jobs, submitted, strict=True):
            job.status, job.slurm_job_id = SUBMITTED, str(handle.job_id)
            job.command = [f"{self._EXECUTOR} job {handle.job_id}"]
        write_summary(sweep_dir, self._EXECUTOR, self.jobs)
        log.info(f"Submitted {len(jobs)} {self._EXECUTOR} jobs; sweep output dir: {sweep_dir}")
        returns: dict[int, JobReturn] = {}
        waiting = dict(enumerate(submitted))
        while waiting:  # collect each job as it ends, so the summary is current while others still run
            for index, handle in list(waiting.items()):
                if handle.done():
                    returns[index] = self._collect(jobs[index], waiting.pop(index))
                    write_summary(sweep_dir, self._EXECUTOR, self.jobs)
            if waiting:
                time.sleep(self.poll_s)
        ordered = [returns[i] for i in range(len(jobs))]
        mark_failures(jobs, ordered, sweep_dir)
        return ordered

    def _collect(self, job: JobRecord, handle: Any) -> JobReturn:
        """One ended job; a crash of the SLURM job itself becomes a failed JobReturn, not an abort."""
        try:
            ret: JobReturn = handle.results()[0]
        except Exception as err:  # killed, timed out, node failure: the other jobs still get collected
            job.status, job.error = FAILED, f"{type(err).__name__}: {err}"
            return JobReturn(overrides=job.overrides, status=JobStatus.FAILED, _return_value=err)
        if ret.hydra_cfg is not None:
            job.output_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
        job.status = COMPLETED if ret.status == JobStatus.COMPLETED else FAILED
        if job.status == FAILED:
            job.error = f"{type(ret._return_value).__name__}: {ret._return_value}"
        return ret


class SlurmDDPLauncher(SubmititDDPLauncher):
    _EXECUTOR = "slurm"


class LocalDDPLauncher(SubmititDDPLauncher):
    """The same logic on submitit's local executor: one task only (no SLURM ranks), for tests."""

    _EXECUTOR = "local"
