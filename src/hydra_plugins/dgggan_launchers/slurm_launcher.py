"""`hydra/launcher=slurm`: each sweep job is one SLURM job whose tasks are Lightning's DDP ranks.

hydra-submitit-launcher submits each job with `--nodes` and `--ntasks-per-node`; submitit's `srun` starts
one task per GPU, and Lightning's `SLURMEnvironment` reads the ranks from SLURM. What this subclass adds:
`trainer.num_nodes`/`trainer.devices` are set from the same launcher keys (so the two can never disagree), the
launcher keys are checked before anything is submitted (one `error:` line each), one W&B group per sweep, a
`sweep_summary.json` written at submission (job ids, folders) and after each collected job, a one-line sweep
error naming every failed job, as `hydra/launcher=ddp` does; and a timed-out, preempted or requeued job saves
last.ckpt on every rank and resumes from it (`dgggan_pl.launch.requeue`). `gpus_per_node: auto` asks for no
GPUs for a CPU trainer; the head watches squeue (`dgggan_pl.launch.slurm_queue`) so that a job cancelled or
lost without accounting, or pending for a reason that cannot clear, ends the wait instead of hanging it
(docs/sweeps.md, SLURM).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.launch import slurm_queue
from dgggan_pl.launch.commands import with_wandb_group
from dgggan_pl.launch.compose import job_config
from dgggan_pl.launch.requeue import (
    CALLBACK_OVERRIDE,
    defer_submitit_signals,
    exit_code_after_stop,
    resume_overrides,
)
from dgggan_pl.launch.runner import exit_by_signal
from dgggan_pl.launch.slurm_queue import SweepWatch
from dgggan_pl.launch.summary import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    LOST,
    SUBMITTED,
    SUMMARY_FILE,
    JobRecord,
    SweepError,
    failures,
    write_summary,
)
from dgggan_pl.runs import last_checkpoint

log = logging.getLogger(__name__)

INIT_KEYS = {"submitit_folder", "max_num_timeout"}  # AutoExecutor(...) arguments, not job parameters
AUTO = "auto"  # gpus_per_node derived from the trainer (`resolve_gpus`)
GONE_AFTER_POLLS = 2  # a job absent from squeue this many polls in a row, without a result, has ended
# Launcher keys that must be whole numbers, with their least value (what each means: conf/hydra/launcher/slurm.yaml).
# Optional ones may also be null.
WHOLE_NUMBER_KEYS = {"nodes": 1, "tasks_per_node": 1, "timeout_min": 1, "signal_delay_s": 0}
OPTIONAL_WHOLE_NUMBER_KEYS = {"cpus_per_task": 1, "max_num_timeout": 0, "array_parallelism": 1}
SLURM_COMMANDS = ("sbatch", "srun")  # submitit submits with sbatch and starts the tasks with srun
# What the launcher itself leaves in a sweep folder before anything is submitted (removed when it refuses).
UNSUBMITTED_ENTRIES = {"multirun.yaml", ".submitit", SUMMARY_FILE}


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
        self.accelerator_key = str(params.pop("accelerator_key", "trainer.accelerator"))
        self.never_starting_reasons = list(params.pop("never_starting_reasons", None) or [])
        super().__init__(**params)
        # trainer key -> (the launcher key it is derived from, its value): one source for both
        self.layout_keys = {
            num_nodes_key: ("nodes", self.params["nodes"]),
            devices_key: ("tasks_per_node", self.params["tasks_per_node"]),
        }
        self.wandb_group_key = wandb_group_key
        self.wandb_group = wandb_group
        self.jobs: list[JobRecord] = []  # every job of the sweep (a sweeper may launch in several batches)
        self._accounting: bool | None = None  # whether sacct answers (slurmdbd), asked at the first poll

    def resolve_gpus(self, job_cfgs: Sequence[DictConfig]) -> None:
        """`gpus_per_node: auto`: one GPU per task for a GPU trainer, none (no `--gpus-per-node`, which a
        CPU-only cluster refuses) when the jobs' `trainer.accelerator` is cpu."""
        if self.params.get("gpus_per_node") != AUTO:
            return
        accelerators = sorted(
            {str(OmegaConf.select(c, self.accelerator_key, default="auto")) for c in job_cfgs}
        )
        if len(accelerators) > 1:
            raise SweepError(
                f"the jobs of one SLURM array share their sbatch options but use {self.accelerator_key}="
                f"{','.join(accelerators)}: set hydra.launcher.gpus_per_node or sweep them separately"
            )
        self.params["gpus_per_node"] = None if accelerators == ["cpu"] else self.params["tasks_per_node"]

    def check_params(self) -> None:
        """The launcher keys SLURM would otherwise refuse (or misread) after submission, checked first."""
        for key, least in {**WHOLE_NUMBER_KEYS, **OPTIONAL_WHOLE_NUMBER_KEYS}.items():
            value = self.params.get(key)
            if value is None and key in OPTIONAL_WHOLE_NUMBER_KEYS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SweepError(f"hydra.launcher.{key}={value}: must be a whole number >= {least}")
        gpus = self.params.get("gpus_per_node")
        if gpus not in (AUTO, None) and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
            raise SweepError(
                f"hydra.launcher.gpus_per_node={gpus}: must be auto, null or a whole number >= 0"
            )
        if self.params["signal_delay_s"] >= 60 * self.params["timeout_min"]:
            raise SweepError(
                f"hydra.launcher.signal_delay_s={self.params['signal_delay_s']}: the requeue signal must come "
                f"before the time limit (hydra.launcher.timeout_min={self.params['timeout_min']} minutes); "
                "lower it or raise timeout_min"
            )
        missing = [
            name for name in SLURM_COMMANDS if self._EXECUTOR == "slurm" and shutil.which(name) is None
        ]
        if missing:
            raise SweepError(
                f"hydra/launcher=slurm submits with SLURM's {' and '.join(SLURM_COMMANDS)}, and "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH here: run the sweep on a login node of the cluster, "
                "or drop hydra/launcher=slurm to run the jobs on this machine (hydra/launcher=ddp)"
            )

    def check_layout(self) -> None:
        """One task per device: gpus_per_node (when set) must equal tasks_per_node."""
        gpus, tasks = self.params.get("gpus_per_node"), self.params["tasks_per_node"]
        if gpus and gpus != tasks:
            raise SweepError(
                f"hydra.launcher.gpus_per_node={gpus} but tasks_per_node={tasks}: Lightning runs one DDP rank "
                "(SLURM task) per GPU; set both to the number of GPUs per node"
            )

    def job_overrides(self, overrides: Sequence[str]) -> list[str]:
        """The job's overrides plus the rank layout (`trainer.num_nodes`, `trainer.devices`), the requeue
        checkpoint callback and the W&B group."""
        assert self.config is not None and self.hydra_context is not None
        for key, (launcher_key, value) in self.layout_keys.items():
            typed = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)
            if typed is not None:
                raise SweepError(
                    f"{typed}: under hydra/launcher=slurm {key} is hydra.launcher.{launcher_key} (now {value}), so "
                    f"that the trainer and the SLURM allocation agree; drop it and set "
                    f"hydra.launcher.{launcher_key}={typed.split('=', 1)[-1]} instead"
                )
        layout = [f"++{key}={value}" for key, (_, value) in self.layout_keys.items()]  # ++: add or override
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
        """Runs inside each SLURM task: submitit's requeue signal and SIGTERM wait for last.ckpt while the
        Trainer fits. (Which rank writes `.hydra/` and which log file each rank uses, the app's config decides:
        conf/train.yaml, conf/hydra/default.yaml.)"""
        import submitit

        environment = submitit.JobEnvironment()
        defer_submitit_signals(environment._usr_sig(), environment.global_rank)
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except SystemExit as stop:  # Lightning ends a SIGTERM'ed fit with SystemExit(None): exit status 0
            code = exit_code_after_stop()
            if code is not None and not stop.code:
                raise SystemExit(code) from stop
            raise

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
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.check_params()
            jobs = self._compose(job_overrides, initial_job_idx)
            submitted = self._submit(jobs)
        except SweepError:
            if not any(job.slurm_job_id for job in self.jobs):
                discard_unsubmitted(sweep_dir)
            raise
        self.jobs += jobs
        for job, handle in zip(jobs, submitted, strict=True):
            job.status, job.slurm_job_id = SUBMITTED, str(handle.job_id)
            job.command = [f"{self._EXECUTOR} job {handle.job_id}"]
        watch = SweepWatch(jobs=jobs, handles=dict(enumerate(submitted)))
        try:  # from here on Ctrl-C leaves the submitted jobs running and says so
            write_summary(sweep_dir, self._EXECUTOR, self.jobs)
            for job in jobs:
                log.info(f"\t#{job.num} ({job.slurm_job_id}): {' '.join(filter_overrides(job.overrides))}")
            log.info(f"Submitted {len(jobs)} {self._EXECUTOR} jobs; sweep output dir: {sweep_dir}")
            self._wait(watch, sweep_dir)
        except KeyboardInterrupt:
            self._detach(watch, sweep_dir)
            exit_by_signal(signal.SIGINT)
        error = failures(self.jobs, sweep_dir)
        if error is not None:
            raise error
        return [watch.returns[i] for i in range(len(jobs))]

    def _compose(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobRecord]:
        """Every job's overrides and folder, and the GPUs they ask for, before anything is submitted."""
        assert self.config is not None and self.hydra_context is not None
        jobs, job_cfgs = [], []
        for i, overrides in enumerate(job_overrides):
            job = JobRecord(num=initial_job_idx + i, overrides=self.job_overrides(overrides))
            job_cfgs.append(job_config(self.hydra_context, self.config, job.overrides, job.num))
            job.output_dir = str(job_cfgs[-1].hydra.runtime.output_dir)
            job.processes = self.params["nodes"] * self.params["tasks_per_node"]
            jobs.append(job)
        self.resolve_gpus(job_cfgs)
        self.check_layout()
        return jobs

    def _submit(self, jobs: Sequence[JobRecord]) -> list[Any]:
        """One array job for the batch; sbatch's refusal (no SLURM configured, a node layout no partition
        has, ...) becomes one line naming the launcher keys it was given."""
        from submitit.core.utils import FailedJobError

        executor = self.make_executor()
        state = Singleton.get_state()
        calls = [(job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", state) for job in jobs]
        try:  # submitit prints sbatch's whole stderr when it fails: its last line goes into ours
            with contextlib.redirect_stderr(io.StringIO()):
                return list(executor.map_array(self, *zip(*calls, strict=True)))
        except FailedJobError as err:
            raise SweepError(sbatch_refusal(str(err), self.params)) from None

    def _wait(self, watch: SweepWatch, sweep_dir: Path) -> None:
        """Collect each job as it ends, so that the summary is current while others still run; on SLURM also
        end the wait for jobs that left the queue without a result or can never start (`_check_queue`)."""
        while watch.handles:
            changed = False
            for index, handle in list(watch.handles.items()):
                if self._finished(handle):
                    watch.returns[index] = self._collect(watch.jobs[index], watch.handles.pop(index), watch)
                    changed = True
            if watch.handles and self._EXECUTOR == "slurm":
                changed = self._check_queue(watch) or changed
            if changed:
                write_summary(sweep_dir, self._EXECUTOR, self.jobs)
            if watch.handles:
                time.sleep(self.poll_s)

    def _finished(self, handle: Any) -> bool:
        """Whether the job wrote its result; asks sacct (submitit's `done`) only where accounting exists,
        instead of three `Bypassing sacct error` lines per poll on clusters without it."""
        if handle.paths.result_pickle.exists():
            return True
        if self._EXECUTOR != "slurm":
            return bool(handle.done())
        if self._accounting is None:
            self._accounting = slurm_queue.accounting_enabled()
        return bool(self._accounting and handle.done())

    def _check_queue(self, watch: SweepWatch) -> bool:
        """squeue once for every waiting job: note when each starts running, record a job gone from the queue
        without a result (cancelled / lost), and stop the sweep when a job pends for a reason that waiting
        cannot clear (naming the launcher key to change). Returns whether a job ended here."""
        queue = slurm_queue.squeue(str(h.job_id) for h in watch.handles.values())
        if queue is None:  # squeue itself failed: nothing can be concluded
            return False
        changed = False
        for index, handle in list(watch.handles.items()):
            entry = queue.get(str(handle.job_id))
            if entry is None:
                watch.misses[index] = watch.misses.get(index, 0) + 1
                if watch.misses[index] >= GONE_AFTER_POLLS and not handle.paths.result_pickle.exists():
                    watch.returns[index] = self._gone(watch.jobs[index], watch.handles.pop(index), watch)
                    changed = True
                continue
            watch.misses[index] = 0
            if entry.state == "RUNNING":
                watch.running_since.setdefault(index, time.monotonic())
            if watch.limits is None and entry.reason in self.never_starting_reasons:
                watch.limits = slurm_queue.node_limits(self.params.get("partition"))
            advice = slurm_queue.never_starting_advice(
                entry, self.params, watch.limits or {}, self.never_starting_reasons
            )
            if advice is not None:
                self._give_up(watch, advice)
                return True
        return changed

    def _give_up(self, watch: SweepWatch, advice: str) -> None:
        """A job can never start: cancel every waiting job of the sweep (they share its sbatch options)."""
        log.error(advice)
        slurm_queue.scancel(str(h.job_id) for h in watch.handles.values())
        for index in list(watch.handles):
            watch.handles.pop(index)
            job = watch.jobs[index]
            job.status, job.error = FAILED, f"not started; {advice}"
            watch.returns[index] = JobReturn(
                overrides=job.overrides, status=JobStatus.FAILED, _return_value=RuntimeError(advice)
            )

    def _gone(self, job: JobRecord, handle: Any, watch: SweepWatch) -> JobReturn:
        """A job that left SLURM's queue without writing its result: scancel'ed, or lost with its node."""
        cancelled = slurm_queue.was_cancelled(Path(handle.paths.stderr))
        job.status = CANCELLED if cancelled else LOST
        how = "was cancelled (scancel)" if cancelled else "left the queue without a result (node lost?)"
        job.error = f"SLURM job {handle.job_id} {how}; see {handle.paths.stderr}"
        self._fill_end(job, handle, watch, returncode=None)
        log.error(f"#{job.num} {job.status}: {job.error}")
        return JobReturn(
            overrides=job.overrides, status=JobStatus.FAILED, _return_value=RuntimeError(job.error)
        )

    def _detach(self, watch: SweepWatch, sweep_dir: Path) -> None:
        """Ctrl-C in the head process: the SLURM jobs go on by themselves; say so in the summary and the log."""
        ids = [str(h.job_id) for h in watch.handles.values()]
        for index, handle in watch.handles.items():
            job = watch.jobs[index]
            job.status = INTERRUPTED
            job.error = (
                f"the sweep's head process was interrupted; SLURM job {handle.job_id} was left as it was "
                f"(squeue -j {handle.job_id}; scancel {handle.job_id} to stop it)"
            )
        write_summary(sweep_dir, self._EXECUTOR, self.jobs)
        log.warning(
            f"Interrupted: stopped watching {len(ids)} SLURM job(s) {' '.join(ids)}, which go on running "
            f"(scancel {' '.join(slurm_queue.array_ids(ids))} stops them); summary: {sweep_dir}"
        )

    def _fill_end(self, job: JobRecord, handle: Any, watch: SweepWatch, returncode: int | None) -> None:
        """`returncode` and `seconds` of an ended job: sacct's where accounting exists, else what the head saw
        (seconds from when squeue first showed it running, or from submission)."""
        job_id = str(handle.job_id)
        record = slurm_queue.job_end(job_id, slurm_queue.sacct([job_id])) if self._accounting else None
        index = watch.jobs.index(job)
        started = watch.running_since.get(index, watch.submitted_at)
        job.seconds = round(time.monotonic() - started, 1)
        job.returncode = returncode
        if record is not None:
            job.returncode = record.returncode if record.returncode is not None else returncode
            job.seconds = record.seconds if record.seconds is not None else job.seconds

    def _collect(self, job: JobRecord, handle: Any, watch: SweepWatch) -> JobReturn:
        """One ended job; a crash of the SLURM job itself becomes a failed JobReturn, not an abort."""
        try:
            ret: JobReturn = handle.results()[0]
        except Exception as err:  # killed, timed out, node failure: the other jobs still get collected
            cancelled = "CANCELLED" in str(err)
            job.status, job.error = (CANCELLED if cancelled else FAILED), f"{type(err).__name__}: {err}"
            self._fill_end(job, handle, watch, returncode=None)
            return JobReturn(overrides=job.overrides, status=JobStatus.FAILED, _return_value=err)
        if ret.hydra_cfg is not None:
            job.output_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
        job.status = COMPLETED if ret.status == JobStatus.COMPLETED else FAILED
        if job.status == FAILED:
            job.error = f"{type(ret._return_value).__name__}: {ret._return_value}"
        self._fill_end(job, handle, watch, returncode=0 if job.status == COMPLETED else 1)
        return ret


def sbatch_refusal(stderr: str, params: dict[str, Any]) -> str:
    """One line for sbatch's refusal: its own last error line and what to check."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = lines[-1] if lines else "no message"
    if "configuration source" in stderr:  # no slurm.conf, no SLURM_CONF, no DNS SRV record
        advice = (
            "SLURM is not configured on this machine: run the sweep on a login node of the cluster, or drop "
            "hydra/launcher=slurm to run the jobs here (hydra/launcher=ddp)"
        )
    else:
        asked = ", ".join(
            f"{key}={params.get(key)}"
            for key in ("partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb")
        )
        advice = f"compare hydra.launcher's {asked} with `sinfo` and change the key SLURM cannot satisfy"
    return f"sbatch refused the sweep's jobs ({said}); {advice}"


def discard_unsubmitted(sweep_dir: Path) -> None:
    """Remove a sweep folder that holds only what Hydra and submitit wrote before a refused submission."""
    entries = {path.name for path in sweep_dir.iterdir()} if sweep_dir.is_dir() else set()
    if entries <= UNSUBMITTED_ENTRIES:
        shutil.rmtree(sweep_dir, ignore_errors=True)


class SlurmDDPLauncher(SubmititDDPLauncher):
    _EXECUTOR = "slurm"


class LocalDDPLauncher(SubmititDDPLauncher):
    """The same logic on submitit's local executor: one task only (no SLURM ranks), for tests."""

    _EXECUTOR = "local"
