"""`hydra/launcher=slurm` against a real one-node SLURM cluster: `make test-slurm` brings one up on this machine
(scripts/slurm_local.sh: localhost only, 4 CPUs announced, a requeued job may start again after ~10 s) and runs
this module twice, without accounting (`-m "slurm_cluster and not slurm_accounting"`) and with slurmdbd
(`-m slurm_accounting`). `make test` and `make test-slow` never select it.

Every case is the real CLI, `python -m dgggan_pl.train -m hydra/launcher=slurm experiment=demo debug=smoke ...`,
run as a user would, with SLURM's own commands (scancel, scontrol requeue) sent from outside. Most of a case is
waiting for SLURM, so all selected cases start together when the module starts (one thread each) and each test
then checks its own case's record.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dgggan_pl.launch.summary import JobRecord, read_summary
from dgggan_pl.report import main as report_main

pytestmark = pytest.mark.slurm_cluster

ACCOUNTING = os.environ.get("DGGGAN_SLURM_ACCOUNTING") == "1"  # set by scripts/slurm_local.sh
SMOKE = [
    "experiment=demo",
    "debug=smoke",
    "logger=csv",
    "hydra.launcher.partition=debug",
    "hydra.launcher.poll_s=2",
]
ONE_CPU = ["hydra.launcher.cpus_per_task=1"]
LONG = ["iterations=100000", "trainer.val_check_interval=100000"]  # still fitting whenever it is signalled
CASE_TIMEOUT_S = 900


class Sweep:
    """One sweep head process (`train -m`) on the cluster, its folder and its summary."""

    def __init__(self, root: Path, name: str, overrides: list[str]) -> None:
        self.root = root / name
        self.root.mkdir(parents=True)
        self.dir = self.root / "sweep"
        self.started = time.monotonic()
        argv = [sys.executable, "-m", "dgggan_pl.train", "-m", "hydra/launcher=slurm", *SMOKE, *overrides]
        argv.append(f"hydra.sweep.dir={self.dir}")
        self.log_path = self.root / "head.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.root, env={**os.environ, "WANDB_MODE": "disabled"}, stdout=log, stderr=log
            )
        _SWEEPS.append(self)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 600) -> float:
        """Poll `ready`; fails when the head exits first or `timeout_s` passes. Returns the seconds waited."""
        start = time.monotonic()
        while not ready():
            assert time.monotonic() - start < timeout_s, (
                f"{what}: not within {timeout_s} s\n{self.head_log()}"
            )
            time.sleep(0.5)
        return time.monotonic() - start

    def finish(self, timeout_s: float = 600) -> int:
        self.proc.wait(timeout=timeout_s)
        self.seconds = round(time.monotonic() - self.started)
        return self.proc.returncode

    def head_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def records(self) -> list[JobRecord]:
        return read_summary(self.dir)

    def job_id(self, num: int = 0) -> str:
        self.wait_until(lambda: len(self.records()) > num and self.records()[num].slurm_job_id, "submission")
        return str(self.records()[num].slurm_job_id)

    def job_dir(self, num: int = 0) -> Path:
        self.job_id(num)
        return Path(str(self.records()[num].output_dir))

    def fitting(self, num: int = 0) -> bool:
        """The job's Trainer started fitting (rank 0's record is written then)."""
        return (self.job_dir(num) / "ranks" / "rank0.json").is_file()

    def run_status(self, num: int = 0) -> str | None:
        try:
            return json.loads((self.job_dir(num) / "run_info.json").read_text()).get("status")
        except (OSError, ValueError):
            return None

    def job_logs(self, num: int = 0) -> str:
        """The job's own log and submitit's stdout/stderr of every attempt."""
        submitit = sorted((self.dir / ".submitit").glob(f"{self.job_id(num)}/*_log.*"))
        return "".join(p.read_text(errors="replace") for p in [*self.job_dir(num).glob("*.log"), *submitit])


_SWEEPS: list[Sweep] = []


def slurm(*argv: str) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def saved_steps(logs: str) -> list[int]:
    """The optimizer steps at which the requeue checkpoint was saved, in order (dgggan_pl.launch.requeue)."""
    marker = " at optimizer step "
    return [int(line.split(marker, 1)[1].split(";")[0]) for line in logs.splitlines() if marker in line]


def logged_iterations(job_dir: Path) -> list[int]:
    """Every iteration with a row in the job's CSV metrics (all versions)."""
    iterations: set[int] = set()
    for path in job_dir.glob("csv/version_*/metrics.csv"):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("trainer/iteration"):
                    iterations.add(int(float(row["trainer/iteration"])))
    return sorted(iterations)


def watch_status(sweep: Sweep, seen: list[str], stop: threading.Event) -> None:
    """Record every run_info status the job goes through (the `requeued` one lasts only while SLURM waits)."""
    while not stop.is_set():
        status = sweep.run_status()
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        time.sleep(0.2)


def requeue_case(root: Path, name: str, command: list[str]) -> dict[str, Any]:
    """A 30-iteration job sent `command + [job id]` while fitting, requeued by SLURM, resumed; its run_info
    statuses on the way. timeout_min=60: submitit counts a USR2 as a time-out only near the limit (a
    preemption here)."""
    overrides = ["iterations=30", "trainer.val_check_interval=10", "hydra.launcher.timeout_min=60"]
    sweep = Sweep(root, name, ["ablation=no_se", *ONE_CPU, *overrides])
    sweep.wait_until(sweep.fitting, "the job starts fitting")
    time.sleep(2)  # inside the first batches
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_status, args=(sweep, seen, stop), daemon=True)
    watcher.start()
    signalled = time.monotonic()
    slurm(*command, sweep.job_id())
    returncode = sweep.finish()
    stop.set()
    watcher.join()
    return {
        "sweep": sweep,
        "rc": returncode,
        "statuses": seen,
        "after_signal_s": time.monotonic() - signalled,
    }


def case_two_jobs(root: Path) -> dict[str, Any]:
    sweep = Sweep(root, "two_jobs", ["ablation=no_grad,no_se", *ONE_CPU])
    return {"sweep": sweep, "rc": sweep.finish()}


def case_cpu_defaults(root: Path) -> dict[str, Any]:
    sweep = Sweep(root, "cpu_defaults", ["ablation=no_se"])  # gpus_per_node and cpus_per_task as shipped
    return {"sweep": sweep, "rc": sweep.finish(timeout_s=300)}


def case_time_limit(root: Path) -> dict[str, Any]:
    # SLURM's shortest limit is a minute and it sends the warning signal on a coarse clock: 3 min with the
    # signal 90 s before leaves a loaded machine time to start fitting first. max_num_timeout=1: resumed
    # once, then submitit gives up at the second time limit (a clean, named failure).
    overrides = ["ablation=no_se", *ONE_CPU, *LONG, "hydra.launcher.timeout_min=3"]
    sweep = Sweep(
        root,
        "time_limit",
        [*overrides, "hydra.launcher.signal_delay_s=90", "hydra.launcher.max_num_timeout=1"],
    )
    return {"sweep": sweep, "rc": sweep.finish(timeout_s=CASE_TIMEOUT_S)}


def scancel_case(root: Path, name: str) -> dict[str, Any]:
    sweep = Sweep(root, name, ["ablation=no_se", *ONE_CPU, *LONG])
    sweep.wait_until(sweep.fitting, "the job starts fitting")
    cancelled = time.monotonic()
    slurm("scancel", sweep.job_id())
    returncode = sweep.finish(timeout_s=300)
    return {"sweep": sweep, "rc": returncode, "after_cancel_s": time.monotonic() - cancelled}


def case_ctrl_c(root: Path) -> dict[str, Any]:
    sweep = Sweep(root, "ctrl_c", ["ablation=no_se", *ONE_CPU, *LONG])
    job = sweep.job_id()
    time.sleep(3)  # the head is polling
    sweep.proc.send_signal(signal.SIGINT)
    returncode = sweep.finish(timeout_s=120)
    queued_after = slurm(
        "squeue", "--noheader", "--array", "--format=%i", f"--jobs={job.split('_')[0]}"
    ).split()
    slurm("scancel", job)  # what the head's message says to do
    return {"sweep": sweep, "rc": returncode, "job": job, "queued_after": queued_after}


CASES: dict[str, Callable[[Path], dict[str, Any]]] = {  # longest first: they share the node's 4 CPUs
    "test_time_limit_requeue_resumes_from_the_checkpoint": case_time_limit,
    "test_scontrol_requeue_resumes_from_a_checkpoint": lambda root: requeue_case(
        root, "scontrol_requeue", ["scontrol", "requeue"]
    ),
    "test_scancel_usr2_resumes_and_completes": lambda root: requeue_case(
        root, "usr2", ["scancel", "--signal=USR2"]
    ),
    "test_scancel_without_accounting_ends_the_sweep": lambda root: scancel_case(root, "scancel"),
    "test_scancel_with_accounting": lambda root: scancel_case(root, "scancel_accounting"),
    "test_ctrl_c_in_the_head_updates_the_summary": case_ctrl_c,
    "test_cpu_only_defaults": case_cpu_defaults,
    "test_two_job_sweep_and_report": case_two_jobs,
}


@pytest.fixture(scope="module")
def cases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    """Start every selected case at once; afterwards stop any head still running and cancel its jobs."""
    assert os.environ.get("SLURM_CONF"), (
        "run through `make test-slurm` (scripts/slurm_local.sh sets SLURM_CONF)"
    )
    slurm("scontrol", "ping")
    selected = [item.name for item in request.session.items if item.name in CASES]
    root = tmp_path_factory.mktemp("slurm")
    with ThreadPoolExecutor(max_workers=len(selected) or 1) as pool:
        futures = {name: pool.submit(CASES[name], root) for name in selected}
        yield futures
        for sweep in _SWEEPS:
            if sweep.proc.poll() is None:
                sweep.proc.kill()
                sweep.proc.wait()
            ids = [r.slurm_job_id for r in sweep.records() if r.slurm_job_id]
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def result(cases: dict[str, Future], name: str) -> dict[str, Any]:
    return cases[name].result(timeout=CASE_TIMEOUT_S)


def test_two_job_sweep_and_report(cases: dict[str, Future]) -> None:
    """The mission's ablation sweep as one SLURM array, then `report`: the summary has every job's exit
    status and run time (item 5), and a CPU trainer asks for no GPUs."""
    case = result(cases, "test_two_job_sweep_and_report")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 0, sweep.head_log()
    records = sweep.records()
    assert [(r.status, r.returncode) for r in records] == [("completed", 0), ("completed", 0)]
    assert all(r.seconds is not None and r.seconds > 0 for r in records)
    sbatch = next((sweep.dir / ".submitit").glob("*/*.sh")).read_text()
    assert "--gpus-per-node" not in sbatch and "#SBATCH --array=0-1" in sbatch
    report_main([str(sweep.dir)])
    with (sweep.dir / "report" / "jobs.csv").open() as handle:
        assert [row[6] for row in list(csv.reader(handle))[1:]] == ["completed", "completed"]
    assert (sweep.dir / "report" / "table1.csv").is_file() and (sweep.dir / "report" / "table2.csv").is_file()


def test_cpu_only_defaults(cases: dict[str, Future]) -> None:
    """The shipped cpus_per_task (8) on a 4-CPU node: SLURM keeps the job pending for a reason that never
    clears; the sweep says so, names the key to change, cancels its job and exits 1 (item 1)."""
    case = result(cases, "test_cpu_only_defaults")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 1, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "failed" and "Reason=PartitionConfig" in (record.error or "")
    assert "lower hydra.launcher.cpus_per_task" in (record.error or "")
    assert "lower hydra.launcher.cpus_per_task" in sweep.head_log()
    assert record.slurm_job_id not in slurm("squeue", "--noheader", "--array", "--format=%i").split()
    sbatch = next((sweep.dir / ".submitit").glob("*/*.sh")).read_text()
    assert "--gpus-per-node" not in sbatch  # the shipped gpus_per_node (auto) on debug=smoke's CPU trainer


def test_time_limit_requeue_resumes_from_the_checkpoint(cases: dict[str, Future]) -> None:
    """USR2 before the time limit: last.ckpt, requeue, the next attempt restores it and trains on (it does not
    start at 0); at the second limit max_num_timeout=1 ends the job with a named failure. The metrics row of
    the checkpoint batch is kept (item 5)."""
    case = result(cases, "test_time_limit_requeue_resumes_from_the_checkpoint")
    sweep: Sweep = case["sweep"]
    logs = sweep.job_logs()
    steps = saved_steps(logs)
    assert len(steps) >= 2 and 0 < steps[0] < steps[1], f"saved at {steps}\n{logs[-4000:]}"
    assert "Restored all states from the checkpoint" in logs
    assert case["rc"] == 1
    (record,) = sweep.records()
    assert record.status == "failed" and "timed-out too many times" in (record.error or "")
    iterations = logged_iterations(sweep.job_dir())
    assert iterations == list(range(iterations[0], iterations[-1] + 1))  # no hole at the requeue
    assert iterations[-1] >= steps[0] // 2  # an iteration is 2 optimizer steps (critic + generator)


def _resumed_and_completed(case: dict[str, Any]) -> None:
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 0, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "completed" and record.returncode == 0
    logs = sweep.job_logs()
    assert saved_steps(logs)[0] > 0 and "Restored all states from the checkpoint" in logs
    assert "requeued" in case["statuses"], case["statuses"]  # not `failed` while waiting (item 4)
    assert case["statuses"][-1] == "completed"
    job_dir = sweep.job_dir()
    assert logged_iterations(job_dir) == list(range(1, 31))  # every iteration once, none lost (item 5)
    assert [p.name for p in job_dir.glob("csv/version_*")] == ["version_0"]  # the same log continued
    info = json.loads((job_dir / "run_info.json").read_text())
    assert info["checkpoints"]["last"]["iteration"] == 30


def test_scancel_usr2_resumes_and_completes(cases: dict[str, Future]) -> None:
    """`scancel --signal=USR2` (preemption where the site sends the user signal): resumed and completed."""
    _resumed_and_completed(result(cases, "test_scancel_usr2_resumes_and_completes"))


def test_scontrol_requeue_resumes_from_a_checkpoint(cases: dict[str, Future]) -> None:
    """`scontrol requeue` (and default preemption) send SIGTERM: the job still saves last.ckpt and the requeued
    job resumes from it in the same log, instead of restarting from iteration 0 (item 2)."""
    case = result(cases, "test_scontrol_requeue_resumes_from_a_checkpoint")
    _resumed_and_completed(case)
    assert "Received SIGTERM: saving last.ckpt" in case["sweep"].job_logs()


def _cancelled(case: dict[str, Any]) -> JobRecord:
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 1, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "cancelled" and str(record.slurm_job_id) in (record.error or "")
    assert "Exited with exit code 143" in sweep.job_logs()  # the job's Python process did not exit 0 (item 4)
    assert "Bypassing sacct error" not in sweep.head_log()
    assert sweep.run_status() == "failed"  # cancelled, not waiting for a requeue
    return record


def test_scancel_without_accounting_ends_the_sweep(cases: dict[str, Future]) -> None:
    """Without slurmdbd sacct knows nothing: the head sees the job leave squeue without a result, records it
    `cancelled` with its job id and finishes (item 3), instead of polling sacct forever."""
    assert not ACCOUNTING, "the cluster without slurmdbd: scripts/slurm_local.sh run -- ..."
    case = result(cases, "test_scancel_without_accounting_ends_the_sweep")
    record = _cancelled(case)
    assert record.seconds is not None and record.seconds > 0


@pytest.mark.slurm_accounting
def test_scancel_with_accounting(cases: dict[str, Future]) -> None:
    """With slurmdbd: submitit learns CANCELLED from sacct; the summary takes the exit status and run time from
    the accounting record."""
    assert ACCOUNTING, "needs the cluster with slurmdbd: scripts/slurm_local.sh run --accounting -- ..."
    record = _cancelled(result(cases, "test_scancel_with_accounting"))
    assert record.returncode is not None and record.returncode != 0
    assert record.seconds is not None and record.seconds > 0


def test_ctrl_c_in_the_head_updates_the_summary(cases: dict[str, Future]) -> None:
    """Ctrl-C in the sweep's head process: no traceback, the summary says the job was left running on SLURM and
    how to stop it, and the job indeed goes on (the head only watches)."""
    case = result(cases, "test_ctrl_c_in_the_head_updates_the_summary")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == -signal.SIGINT, sweep.head_log()
    assert "Traceback" not in sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "interrupted" and f"scancel {case['job']}" in (record.error or "")
    assert case["job"] in case["queued_after"]
