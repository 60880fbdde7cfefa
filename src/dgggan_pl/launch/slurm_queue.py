"""What a SLURM sweep's head process asks SLURM itself (squeue, sacct, sinfo), beyond what submitit tracks.

submitit learns a job's end from `sacct`; a cluster without an accounting database (slurmdbd) answers
nothing, and a job that ends without writing its result (scancel, a lost node) would be waited for forever.
squeue works on every cluster: a job gone from it without a result has ended for good, and a pending job's
`Reason` says whether it can ever start. Every call is bounded and a failed call means "unknown", never "gone".
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PENDING_STATE = "PENDING"
CANCELLED_MARK = "CANCELLED"  # slurmstepd's `*** JOB <id> ON <node> CANCELLED AT ... ***` in the job's stderr


@dataclass(frozen=True)
class QueueEntry:
    """One job (array task) as squeue lists it."""

    job_id: str
    state: str
    reason: str


@dataclass(frozen=True)
class Accounting:
    """One job's end as sacct records it (only on clusters with slurmdbd)."""

    state: str
    returncode: int | None
    seconds: float | None


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning(f"{argv[0]} failed ({err}); trying again at the next poll")
        return None


def array_ids(job_ids: Iterable[str]) -> list[str]:
    """`12_0`, `12_1`, `13` -> `12`, `13`: what `squeue --jobs` / `sacct -j` take for every task at once."""
    return sorted({job_id.split("_", 1)[0] for job_id in job_ids})


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """`squeue --noheader --array --format=%i|%T|%r` output, by job id."""
    entries = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            entries[parts[0]] = QueueEntry(*parts)
    return entries


def squeue(job_ids: Iterable[str], timeout_s: float = 30.0) -> dict[str, QueueEntry] | None:
    """The listed jobs still in SLURM's queue (pending, running, completing), or None when squeue failed."""
    ids = array_ids(job_ids)
    argv = ["squeue", "--noheader", "--array", "--format=%i|%T|%r", f"--jobs={','.join(ids)}"]
    result = _run(argv, timeout_s)
    if result is None:
        return None
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # every listed job has left slurmctld's memory
            return {}
        log.warning(f"squeue failed: {result.stderr.strip()}")
        return None
    return parse_squeue(result.stdout)


def parse_sacct(text: str) -> dict[str, Accounting]:
    """`sacct -X -n -P -o JobID,State,ExitCode,ElapsedRaw` output, by job id (`CANCELLED by 0` -> CANCELLED)."""
    records = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        job_id, state, exit_code, elapsed = parts
        code, _, signum = exit_code.partition(":")  # `<exit status>:<signal that ended it>`
        returncode = int(code) if code.isdigit() else None
        if signum.isdigit() and int(signum) > 0:
            returncode = 128 + int(signum)  # as a shell reports a process killed by that signal
        records[job_id] = Accounting(
            state=state.split(" ", 1)[0],
            returncode=returncode,
            seconds=float(elapsed) if elapsed.isdigit() else None,
        )
    return records


def sacct(job_ids: Iterable[str], timeout_s: float = 30.0) -> dict[str, Accounting]:
    """The accounting records of the listed jobs and their steps (`12_0`, `12_0.batch`, `12_0.0`); {} on a
    cluster without accounting."""
    ids = array_ids(job_ids)
    argv = ["sacct", "-n", "-P", "-o", "JobID,State,ExitCode,ElapsedRaw", "-j", ",".join(ids)]
    result = _run(argv, timeout_s)
    if result is None or result.returncode != 0:
        return {}
    return parse_sacct(result.stdout)


def job_end(job_id: str, records: Mapping[str, Accounting]) -> Accounting | None:
    """One job's end: its own record, with the exit status of its first failed step when the job's own says 0
    (a cancelled job reads 0:0 while its srun step exited 143)."""
    own = records.get(job_id)
    if own is None:
        return None
    failed = [r.returncode for key, r in records.items() if key.startswith(f"{job_id}.") and r.returncode]
    return Accounting(own.state, own.returncode or (failed[0] if failed else own.returncode), own.seconds)


def was_cancelled(stderr_path: Path) -> bool:
    """Whether slurmstepd wrote its cancellation line into the job's stderr (scancel, or a cancelled requeue)."""
    try:
        return CANCELLED_MARK in stderr_path.read_text(errors="replace")
    except OSError:
        return False


def parse_sinfo(text: str) -> dict[str, int]:
    """`sinfo --noheader --format=%c|%m|%D` output (CPUs, memory in MB, node count per group of nodes): the
    largest node's CPUs and memory and the number of nodes ({} when nothing could be read)."""
    cpus, memory, nodes = [], [], 0
    for line in text.splitlines():
        parts = [part.strip().rstrip("+") for part in line.split("|")]
        if len(parts) == 3 and all(part.isdigit() for part in parts):
            cpus.append(int(parts[0]))
            memory.append(int(parts[1]))
            nodes += int(parts[2])
    return {"cpus": max(cpus), "memory_mb": max(memory), "nodes": nodes} if cpus else {}


def node_limits(partition: str | None, timeout_s: float = 30.0) -> dict[str, int]:
    """`parse_sinfo` of `partition` (the default one if None)."""
    argv = ["sinfo", "--noheader", "--format=%c|%m|%D"]
    if partition:
        argv.append(f"--partition={partition}")
    result = _run(argv, timeout_s)
    if result is None or result.returncode != 0:
        return {}
    return parse_sinfo(result.stdout)


def never_starting_advice(
    entry: QueueEntry, params: Mapping[str, Any], limits: Mapping[str, int], reasons: Iterable[str]
) -> str | None:
    """For a pending job whose squeue Reason cannot clear by waiting: what to change (a launcher key)."""
    if entry.state != PENDING_STATE or entry.reason not in set(reasons):
        return None
    asked_cpus = int(params.get("cpus_per_task") or 1) * int(params.get("tasks_per_node") or 1)
    asked_mb = float(params.get("mem_gb") or 0) * 1024
    partition = params.get("partition") or "the default partition"
    asked_nodes = int(params.get("nodes") or 1)
    if "nodes" in limits and asked_nodes > limits["nodes"]:
        advice = (
            f"it asks for hydra.launcher.nodes={asked_nodes} but {partition} has {limits['nodes']} node(s): "
            "lower hydra.launcher.nodes or choose a larger hydra.launcher.partition"
        )
    elif "cpus" in limits and asked_cpus > limits["cpus"]:
        advice = (
            f"it asks for {asked_cpus} CPUs per node (hydra.launcher.cpus_per_task="
            f"{params.get('cpus_per_task')} x tasks_per_node={params.get('tasks_per_node')}) but the largest node "
            f"of {partition} has {limits['cpus']}: lower hydra.launcher.cpus_per_task"
        )
    elif "memory_mb" in limits and asked_mb > limits["memory_mb"]:
        advice = (
            f"it asks for hydra.launcher.mem_gb={params.get('mem_gb')} but the largest node of {partition} "
            f"has {limits['memory_mb']} MB: lower hydra.launcher.mem_gb"
        )
    else:
        advice = (
            "compare hydra.launcher.partition, cpus_per_task, mem_gb, gpus_per_node, timeout_min, qos, "
            "account and constraint with `sinfo` / `scontrol show partition`"
        )
    return (
        f"SLURM job {entry.job_id} is pending with Reason={entry.reason}, which waiting cannot clear: "
        f"{advice}"
    )


def scancel(job_ids: Iterable[str], timeout_s: float = 30.0) -> None:
    """Cancel the listed jobs (the sweep gives up on them)."""
    ids = list(job_ids)
    if ids:
        _run(["scancel", *ids], timeout_s)


def accounting_enabled(timeout_s: float = 30.0) -> bool:
    """Whether this cluster keeps job accounting (sacct answers); without slurmdbd it does not."""
    result = _run(["sacct", "-n", "-X", "-o", "JobID", "--starttime=now"], timeout_s)
    return result is not None and result.returncode == 0


def this_job_id() -> str:
    """Inside a job: its id as squeue and scontrol name it (`<array job>_<task>` for an array task)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ["SLURM_JOB_ID"]


def requeue(job_id: str, timeout_s: float = 60.0) -> str | None:
    """`scontrol requeue <job_id>`: None once SLURM accepted it, else what went wrong."""
    result = _run(["scontrol", "requeue", job_id], timeout_s)
    if result is None:
        return "scontrol could not be run"
    if result.returncode != 0:
        return result.stderr.strip() or f"exit status {result.returncode}"
    return None


def this_job_requeued(timeout_s: float = 10.0) -> bool:
    """Inside a job: whether SLURM is requeueing it (scontrol requeue, preemption, submitit's requeue)
    rather than ending it (scancel). A requeue counts up the job's `Restarts` past this run's
    SLURM_RESTART_COUNT; both read the same while the job is being cancelled."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return True  # no SLURM to ask (submitit's local executor): its requeue stands
    for _ in range(3):  # slurmctld may be busy requeueing: ask again before concluding
        result = _run(["scontrol", "show", "job", "--oneliner", job_id], timeout_s)
        if result is not None and result.returncode == 0:
            break
        time.sleep(1)
    if result is None or result.returncode != 0:
        log.warning(f"scontrol show job {job_id} failed: cannot tell a requeue from a cancellation")
        return False
    # `scontrol show job <id>` of an array's first task lists every task of the array, one line each
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(f"JobId={job_id} ")), "")
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    restarts = fields.get("Restarts", "")
    return restarts.isdigit() and int(restarts) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


@dataclass
class SweepWatch:
    """The head process's view of one submitted batch of jobs while it waits for them."""

    jobs: list[Any]
    handles: dict[int, Any]  # index in `jobs` -> submitit job, while not collected
    returns: dict[int, Any] = field(default_factory=dict)
    misses: dict[int, int] = field(default_factory=dict)  # consecutive polls a job was absent from squeue
    running_since: dict[int, float] = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.monotonic)
    limits: dict[str, int] | None = None  # the partition's largest node (sinfo), read when first needed
