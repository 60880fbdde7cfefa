"""`hydra/launcher=slurm` and `scripts/sbatch_train.sh` against a real one-node SLURM cluster: `make test-slurm`
brings one up on this machine (scripts/slurm_local.sh: localhost only, 6 CPUs announced, a requeued job may start
again after ~10 s) and runs this module twice, without accounting (`-m "slurm_cluster and not
slurm_accounting"`) and with slurmdbd (`-m slurm_accounting`). `make test` and `make test-slow` never select it.

Every case is the real CLI, `python -m dgggan_pl.train -m hydra/launcher=slurm experiment=demo debug=smoke ...`
or `sbatch scripts/sbatch_train.sh ...`, run as a user would, with SLURM's own commands (scancel, scontrol) sent
from outside. A signal is sent once the job's metrics file shows a given iteration, never after a sleep; the
time-limit case shortens the job's limit at such an iteration, so SLURM's own warning signal comes while it fits.
Most of a case is waiting for SLURM, so all selected cases start together when the module starts (one thread
each) and each test then checks its own case's record.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dgggan_pl.launch.summary import JobRecord, read_summary
from dgggan_pl.report import main as report_main
from test_slurm import sbatch_directives

pytestmark = pytest.mark.slurm_cluster

ACCOUNTING = os.environ.get("DGGGAN_SLURM_ACCOUNTING") == "1"  # set by scripts/slurm_local.sh
REPOSITORY = Path(__file__).resolve().parents[1]
SBATCH_SCRIPT = REPOSITORY / "scripts" / "sbatch_train.sh"
APP = ["experiment=demo", "debug=smoke", "logger=csv", "+logger.csv.flush_logs_every_n_steps=1"]
SMOKE = [*APP, "hydra.launcher.partition=debug", "hydra.launcher.poll_s=2"]
ONE_CPU = ["hydra.launcher.cpus_per_task=1"]
TWO_TASKS = ["trainer=ddp_cpu", "hydra.launcher.tasks_per_node=2", *ONE_CPU]  # two gloo ranks, one SLURM job
LONG = ["iterations=100000", "trainer.val_check_interval=100000"]  # still fitting whenever it is signalled
REQUEUE_ITERATIONS = 30
SIGNAL_AT = 3  # a requeue signal is sent once this many iterations (past the last resume) are logged
CASE_TIMEOUT_S = 900
TIME_LIMIT_MIN = 9  # under 10 minutes submitit counts every USR2 as a time-out (not a preemption)


# `python -m dgggan_pl.train ARGS` as a terminal starts it: Ctrl-C (SIGINT) raises KeyboardInterrupt even when
# this test process was started in the background, where SIGINT is ignored and every child would inherit that.
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'train'; runpy.run_module('dgggan_pl.train', run_name='__main__', alter_sys=True)"
)


def slurm(*argv: str) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def free_port() -> int:
    """A port for the job's rendezvous (MASTER_PORT), instead of Lightning's 15000 + job id."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def training_iterations(job_dir: Path) -> dict[str, list[int]]:
    """Per CSV log version, the iteration of every training row in file order (duplicates kept)."""
    versions = {}
    for path in sorted(job_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("train/iteration")]
        versions[path.parent.name] = [int(float(row["train/iteration"])) for row in rows]
    return versions


def last_iteration(job_dir: Path) -> int:
    try:
        return max((i for rows in training_iterations(job_dir).values() for i in rows), default=0)
    except (OSError, ValueError, csv.Error):  # a row being written
        return 0


def saved_steps(logs: str) -> list[int]:
    """The optimizer steps at which the requeue checkpoint was saved, in log order (dgggan_pl.launch.requeue)."""
    found = re.findall(r"saved \S+last\.ckpt at optimizer step (\d+);", logs)
    return [int(step) for step in found]


def run_time_s(job_id: str) -> int:
    """How long the job's current attempt has run (scontrol's RunTime, `[D-]HH:MM:SS`)."""
    found = re.search(r"RunTime=(?:(\d+)-)?(\d+):(\d+):(\d+)", slurm("scontrol", "show", "job", job_id))
    assert found, f"no RunTime for job {job_id}"
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def set_time_limit(job_id: str, minutes: int) -> None:
    slurm("scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}")


def expire_soon(job_id: str) -> int:
    """Move the job's time limit to 60-120 s from now: SLURM's warning signal (`signal_delay_s=90` before the
    limit) then comes within seconds. Returns the new limit in minutes."""
    minutes = run_time_s(job_id) // 60 + 2
    set_time_limit(job_id, minutes)
    return minutes


_STOP = threading.Event()  # set when the module's tests are done: cases still waiting give up


def wait_until(ready: Callable[[], bool], what: str, log: Callable[[], str], timeout_s: float = 600) -> None:
    start = time.monotonic()
    while not ready():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s\n{log()}"
        assert not _STOP.is_set(), f"{what}: the tests ended first"
        time.sleep(0.5)


class Sweep:
    """One sweep head process (`train -m`) on the cluster, its folder and its summary."""

    def __init__(
        self, root: Path, name: str, overrides: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.root = root / name
        self.root.mkdir(parents=True)
        self.dir = self.root / "sweep"
        self.started = time.monotonic()
        argv = [sys.executable, "-c", AS_FROM_A_TERMINAL, "-m", "hydra/launcher=slurm", *SMOKE, *overrides]
        argv.append(f"hydra.sweep.dir={self.dir}")
        self.log_path = self.root / "head.log"
        env = {**os.environ, "WANDB_MODE": "disabled", "MASTER_PORT": str(free_port()), **(env or {})}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(argv, cwd=self.root, env=env, stdout=log, stderr=log)
        _SWEEPS.append(self)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
        """Poll `ready`; fails when `timeout_s` passes."""
        wait_until(ready, what, self.head_log, timeout_s)

    def finish(self, timeout_s: float = CASE_TIMEOUT_S) -> int:
        self.proc.wait(timeout=timeout_s)
        self.seconds = round(time.monotonic() - self.started)
        return self.proc.returncode

    def head_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def records(self) -> list[JobRecord]:
        return read_summary(self.dir)

    def job_id(self, num: int = 0) -> str:
        self.wait_until(
            lambda: len(self.records()) > num and bool(self.records()[num].slurm_job_id), "submission"
        )
        return str(self.records()[num].slurm_job_id)

    def job_dir(self, num: int = 0) -> Path:
        self.job_id(num)
        return Path(str(self.records()[num].output_dir))

    def run_status(self) -> str | None:
        try:
            return json.loads((self.job_dir() / "run_info.json").read_text()).get("status")
        except (OSError, ValueError):
            return None

    def task_logs(self, num: int = 0) -> list[str]:
        """submitit's stdout+stderr of each task (all attempts), by task: `<job>_<task>_log.{out,err}`."""
        folder = self.dir / ".submitit" / self.job_id(num)
        tasks = sorted({p.name.split("_log.")[0] for p in folder.glob("*_log.*")})
        return [
            "".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"{t}_log.*"))) for t in tasks
        ]

    def job_logs(self, num: int = 0) -> str:
        """The job's own logs (every rank's) and submitit's of every task and attempt."""
        own = "".join(p.read_text(errors="replace") for p in self.job_dir(num).glob("*.log"))
        return own + "".join(self.task_logs(num))

    def signal_at(self, iteration: int, command: list[str]) -> float:
        """Send `command + [job id]` once the job's metrics show `iteration`; returns when it was sent."""
        self.wait_until(lambda: last_iteration(self.job_dir()) >= iteration, f"iteration {iteration} logged")
        slurm(*command, self.job_id())
        return time.monotonic()


_SWEEPS: list[Sweep] = []
_BATCH_JOBS: list[str] = []


def watch_status(status: Callable[[], str | None], seen: list[str], stop: threading.Event) -> None:
    """Record every run_info status the job goes through (the `requeued` one lasts only while SLURM waits)."""
    while not stop.is_set():
        current = status()
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        time.sleep(0.2)


def requeue_case(root: Path, name: str, command: list[str]) -> dict[str, Any]:
    """A 30-iteration two-task job sent `command + [job id]` at a logged iteration, requeued, resumed; its
    run_info statuses on the way. timeout_min=60: submitit counts a USR2 this early as a preemption."""
    overrides = [
        f"iterations={REQUEUE_ITERATIONS}",
        "trainer.val_check_interval=10",
        "hydra.launcher.timeout_min=60",
    ]
    sweep = Sweep(root, name, ["ablation=no_se", *TWO_TASKS, *overrides])
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_status, args=(sweep.run_status, seen, stop), daemon=True)
    watcher.start()
    signalled = sweep.signal_at(SIGNAL_AT, command)
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


def case_two_nodes(root: Path) -> dict[str, Any]:
    """hydra.launcher.nodes=2 on a one-node cluster: the submission path of a multi-node job, up to SLURM."""
    sweep = Sweep(root, "two_nodes", ["ablation=no_se", *TWO_TASKS, "hydra.launcher.nodes=2"])
    return {"sweep": sweep, "rc": sweep.finish(timeout_s=300)}


def case_time_limit(root: Path) -> dict[str, Any]:
    """SLURM's own warning signal at the time limit, twice: once the job logged SIGNAL_AT iterations its limit
    is moved to a minute or two away (USR2 comes 90 s before it), the requeued attempt gets a long limit again
    until it has logged SIGNAL_AT iterations past the checkpoint. max_num_timeout=1: resumed once, then
    submitit gives up at the second limit (a clean, named failure)."""
    launcher = ["hydra.launcher.signal_delay_s=90", "hydra.launcher.max_num_timeout=1"]
    sweep = Sweep(
        root,
        "time_limit",
        ["ablation=no_se", *ONE_CPU, *LONG, f"hydra.launcher.timeout_min={TIME_LIMIT_MIN}", *launcher],
    )
    job = sweep.job_id()
    limits = []
    sweep.wait_until(lambda: last_iteration(sweep.job_dir()) >= SIGNAL_AT, "first iterations logged")
    limits.append(expire_soon(job))
    sweep.wait_until(lambda: "Requeued job" in sweep.job_logs(), "the first requeue")
    set_time_limit(job, TIME_LIMIT_MIN)  # the next attempt starts with the long limit
    first = saved_steps(sweep.job_logs())[0] // 2  # iterations: 2 optimizer steps each (critic + generator)
    sweep.wait_until(
        lambda: last_iteration(sweep.job_dir()) >= first + SIGNAL_AT, "iterations after the resume"
    )
    limits.append(expire_soon(job))
    return {"sweep": sweep, "rc": sweep.finish(), "limits": limits}


def scancel_case(root: Path, name: str) -> dict[str, Any]:
    sweep = Sweep(root, name, ["ablation=no_se", *ONE_CPU, *LONG])
    cancelled = sweep.signal_at(1, ["scancel"])
    returncode = sweep.finish(timeout_s=300)
    return {"sweep": sweep, "rc": returncode, "after_cancel_s": time.monotonic() - cancelled}


def case_ctrl_c(root: Path) -> dict[str, Any]:
    sweep = Sweep(root, "ctrl_c", ["ablation=no_se", *ONE_CPU, *LONG])
    job = sweep.job_id()
    sweep.wait_until(lambda: "Submitted 1 slurm jobs" in sweep.head_log(), "the head polls")
    sweep.proc.send_signal(signal.SIGINT)
    returncode = sweep.finish(timeout_s=120)
    queued_after = slurm(
        "squeue", "--noheader", "--array", "--format=%i", f"--jobs={job.split('_')[0]}"
    ).split()
    slurm("scancel", job)  # what the head's message says to do
    return {"sweep": sweep, "rc": returncode, "job": job, "queued_after": queued_after}


def case_plain_sbatch(root: Path) -> dict[str, Any]:
    """`sbatch scripts/sbatch_train.sh` with two tasks: USR2 (what the time limit sends) at a logged iteration,
    then `scontrol requeue` (SIGTERM) in the resumed attempt; it resumes again and completes."""
    folder = root / "plain_sbatch"
    folder.mkdir()
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "DGGGAN_PYTHON": sys.executable,
        "MASTER_PORT": str(free_port()),
    }
    options = [
        "--partition=debug",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        "--time=30",
    ]
    overrides = [*APP, "trainer=ddp_cpu", f"iterations={REQUEUE_ITERATIONS}", "trainer.val_check_interval=10"]
    submitted = subprocess.run(
        ["sbatch", "--parsable", *options, str(SBATCH_SCRIPT), *overrides],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    _BATCH_JOBS.append(job)
    started = time.monotonic()
    job_dir = folder / "outputs" / "demo" / "runs" / f"slurm-{job}"
    log_path = folder / f"slurm-{job}.out"

    def log() -> str:
        return log_path.read_text(errors="replace") if log_path.is_file() else "(no log yet)"

    def status() -> str | None:
        try:
            return json.loads((job_dir / "run_info.json").read_text()).get("status")
        except (OSError, ValueError):
            return None

    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_status, args=(status, seen, stop), daemon=True)
    watcher.start()
    wait_until(lambda: last_iteration(job_dir) >= SIGNAL_AT, "first iterations logged", log)
    slurm("scancel", "--signal=USR2", job)
    wait_until(lambda: len(saved_steps(log())) >= 2, "both ranks saved", log)
    first = saved_steps(log())[0] // 2
    wait_until(lambda: last_iteration(job_dir) >= first + SIGNAL_AT, "iterations after the first resume", log)
    slurm("scontrol", "requeue", job)
    wait_until(
        lambda: job not in slurm("squeue", "--noheader", "--format=%i").split(), "the job ends", log, 900
    )
    stop.set()
    watcher.join()
    return {
        "job": job,
        "job_dir": job_dir,
        "log": log(),
        "statuses": seen,
        "seconds": time.monotonic() - started,
    }


CASES: dict[str, Callable[[Path], dict[str, Any]]] = {  # longest first: they share the node's CPUs
    "test_plain_sbatch_job_requeued_twice_resumes_and_completes": case_plain_sbatch,
    "test_time_limit_requeue_resumes_from_the_checkpoint": case_time_limit,
    "test_two_task_job_scontrol_requeue_resumes": lambda root: requeue_case(
        root, "scontrol_requeue", ["scontrol", "requeue"]
    ),
    "test_two_task_job_usr2_saves_on_every_rank_and_resumes": lambda root: requeue_case(
        root, "usr2", ["scancel", "--signal=USR2"]
    ),
    "test_scancel_without_accounting_ends_the_sweep": lambda root: scancel_case(root, "scancel"),
    "test_scancel_with_accounting": lambda root: scancel_case(root, "scancel_accounting"),
    "test_ctrl_c_in_the_head_updates_the_summary": case_ctrl_c,
    "test_cpu_only_defaults": case_cpu_defaults,
    "test_two_job_sweep_and_report": case_two_jobs,
    "test_two_nodes_on_a_one_node_cluster_is_refused_in_one_line": case_two_nodes,
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
        _STOP.set()
        for sweep in _SWEEPS:
            if sweep.proc.poll() is None:
                sweep.proc.kill()
                sweep.proc.wait()
        ids = [r.slurm_job_id for s in _SWEEPS for r in s.records() if r.slurm_job_id] + _BATCH_JOBS
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def result(cases: dict[str, Future], name: str) -> dict[str, Any]:
    return cases[name].result(timeout=CASE_TIMEOUT_S)


def assert_every_iteration_once(job_dir: Path, last: int) -> None:
    """Training rows for iterations 1..last, each exactly once, in one CSV log continued across attempts."""
    versions = training_iterations(job_dir)
    assert list(versions) == ["version_0"], f"one log continued, not {list(versions)}"
    rows = versions["version_0"]
    repeated = {i: n for i, n in Counter(rows).items() if n > 1}
    assert not repeated and rows == list(range(1, last + 1)), f"repeated {repeated}; rows {rows}"


def test_two_job_sweep_and_report(cases: dict[str, Future]) -> None:
    """The mission's ablation sweep as one SLURM array, then `report`: the summary has every job's exit
    status and run time, and a CPU trainer asks for no GPUs."""
    case = result(cases, "test_two_job_sweep_and_report")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 0, sweep.head_log()
    records = sweep.records()
    assert [(r.status, r.returncode) for r in records] == [("completed", 0), ("completed", 0)]
    assert all(r.seconds is not None and r.seconds > 0 for r in records)
    directives = sbatch_directives(next((sweep.dir / ".submitit").glob("*/*.sh")).read_text())
    assert directives["--array"] == "0-1%2" and "--gpus-per-node" not in directives  # 2 tasks, both at once
    report_main([str(sweep.dir)])
    with (sweep.dir / "report" / "jobs.csv").open() as handle:
        assert [row[6] for row in list(csv.reader(handle))[1:]] == ["completed", "completed"]
    assert (sweep.dir / "report" / "table1.csv").is_file() and (sweep.dir / "report" / "table2.csv").is_file()


def test_cpu_only_defaults(cases: dict[str, Future]) -> None:
    """The shipped cpus_per_task (8) on a 6-CPU node: SLURM keeps the job pending for a reason that never
    clears; the sweep says so, names the key to change, cancels its job and exits 1."""
    case = result(cases, "test_cpu_only_defaults")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 1, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "failed" and "Reason=PartitionConfig" in (record.error or "")
    assert "lower hydra.launcher.cpus_per_task" in (record.error or "")
    assert sweep.head_log().splitlines()[-1].startswith("error: 1 of 1 sweep jobs failed: #0")
    assert record.slurm_job_id not in slurm("squeue", "--noheader", "--array", "--format=%i").split()
    directives = sbatch_directives(next((sweep.dir / ".submitit").glob("*/*.sh")).read_text())
    assert (
        directives["--cpus-per-task"] == "8" and "--gpus-per-node" not in directives
    )  # CPU trainer, no GPUs


def test_two_nodes_on_a_one_node_cluster_is_refused_in_one_line(cases: dict[str, Future]) -> None:
    """hydra.launcher.nodes=2: sbatch is given `--nodes=2 --ntasks-per-node=2` and the jobs trainer.num_nodes=2;
    a one-node partition can never start it, which the sweep says in one line naming the key, cancelling it."""
    case = result(cases, "test_two_nodes_on_a_one_node_cluster_is_refused_in_one_line")
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 1, sweep.head_log()
    directives = sbatch_directives(next((sweep.dir / ".submitit").glob("*/*.sh")).read_text())
    assert (directives["--nodes"], directives["--ntasks-per-node"]) == ("2", "2")
    (record,) = sweep.records()
    assert "++trainer.num_nodes=2" in record.overrides and "++trainer.devices=2" in record.overrides
    assert record.status == "failed" and record.slurm_job_id not in slurm(
        "squeue", "--noheader", "--format=%i"
    )
    last = sweep.head_log().splitlines()[-1]
    # SLURM gives either reason, depending on when its scheduler first looks at the job
    assert last.startswith("error: 1 of 1 sweep jobs failed: #0 ") and re.search(
        r"Reason=Partition(Config|NodeLimit)", last
    )
    assert "hydra.launcher.nodes=2 but debug has 1 node(s): lower hydra.launcher.nodes" in last


def test_time_limit_requeue_resumes_from_the_checkpoint(cases: dict[str, Future]) -> None:
    """USR2 before the time limit: last.ckpt, requeue, the next attempt restores it and trains on; at the second
    limit max_num_timeout=1 ends the job with a named failure. Every iteration up to the second checkpoint is
    logged exactly once, the checkpoint batches' rows included."""
    case = result(cases, "test_time_limit_requeue_resumes_from_the_checkpoint")
    sweep: Sweep = case["sweep"]
    (task,) = sweep.task_logs()  # the one task's output, every attempt
    steps = saved_steps(task)
    assert len(steps) == 2 and 0 < steps[0] < steps[1], f"saved at {steps}\n{task[-4000:]}"
    assert task.count("Restored all states from the checkpoint") == 1
    assert case["rc"] == 1, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "failed" and "timed-out too many times" in (record.error or "")
    assert_every_iteration_once(sweep.job_dir(), steps[1] // 2)  # an iteration is 2 optimizer steps


def _resumed_and_completed(case: dict[str, Any]) -> str:
    """The two-task job completed after one requeue: one folder, one record, every iteration once; both ranks
    saved at the same step. Returns the job's logs."""
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 0, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "completed" and record.returncode == 0 and record.processes == 2
    tasks = sweep.task_logs()
    assert len(tasks) == 2 and [len(set(saved_steps(t))) for t in tasks] == [1, 1]  # each rank saved once
    assert saved_steps(tasks[0])[0] == saved_steps(tasks[1])[0] > 0  # ... at the same step
    logs = sweep.job_logs()
    assert logs.count("Restored all states from the checkpoint") >= 1
    assert "requeued" in case["statuses"] and case["statuses"][-1] == "completed", case["statuses"]
    job_dir = sweep.job_dir()
    assert_every_iteration_once(job_dir, REQUEUE_ITERATIONS)
    ranks = [json.loads(p.read_text()) for p in sorted((job_dir / "ranks").glob("rank*.json"))]
    assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    info = json.loads((job_dir / "run_info.json").read_text())
    assert info["checkpoints"]["last"]["iteration"] == REQUEUE_ITERATIONS
    return logs


def test_two_task_job_usr2_saves_on_every_rank_and_resumes(cases: dict[str, Future]) -> None:
    """`scancel --signal=USR2` (preemption where the site sends the user signal) to a job of two tasks: both
    ranks save last.ckpt at the same step and exit (rank 1 used to train on against a rank 0 that had gone);
    submitit requeues, the job resumes and completes."""
    _resumed_and_completed(result(cases, "test_two_task_job_usr2_saves_on_every_rank_and_resumes"))


def test_two_task_job_scontrol_requeue_resumes(cases: dict[str, Future]) -> None:
    """`scontrol requeue` (and default preemption) send SIGTERM to both tasks: last.ckpt at one step, both exit
    143, SLURM requeues, the job resumes in the same folder and log."""
    case = result(cases, "test_two_task_job_scontrol_requeue_resumes")
    logs = _resumed_and_completed(case)
    assert "Received SIGTERM: saving last.ckpt" in logs
    assert "Exited with exit code 143" in logs  # srun's line for the tasks of the first attempt


def test_plain_sbatch_job_requeued_twice_resumes_and_completes(cases: dict[str, Future]) -> None:
    """`sbatch scripts/sbatch_train.sh` (srun, two tasks): after USR2 rank 0 requeues the job itself, after
    SIGTERM SLURM does; each attempt resumes from the last.ckpt both ranks saved at one step, in the one run
    folder `outputs/demo/runs/slurm-<job id>`; every iteration is logged exactly once."""
    case = result(cases, "test_plain_sbatch_job_requeued_twice_resumes_and_completes")
    log, job_dir = case["log"], case["job_dir"]
    steps = saved_steps(log)
    assert len(steps) == 4 and steps[0] == steps[1] < steps[2] == steps[3], f"saved at {steps}\n{log[-4000:]}"
    assert [p.name for p in job_dir.parent.iterdir()] == [job_dir.name]  # one folder for every attempt
    info = json.loads((job_dir / "run_info.json").read_text())
    assert info["status"] == "completed" and info["checkpoints"]["last"]["iteration"] == REQUEUE_ITERATIONS
    assert case["statuses"].count("requeued") == 2 and case["statuses"][-1] == "completed", case["statuses"]
    assert (
        f"requeued SLURM job {case['job']}" in log
        and log.count("Restored all states from the checkpoint") == 2
    )
    assert "stopped by SIGUSR2; run_info.json says requeued" in log
    assert "stopped by SIGTERM; run_info.json says requeued" in log
    assert_every_iteration_once(job_dir, REQUEUE_ITERATIONS)
    ranks = [json.loads(p.read_text()) for p in sorted((job_dir / "ranks").glob("rank*.json"))]
    assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]


def _cancelled(case: dict[str, Any]) -> JobRecord:
    sweep: Sweep = case["sweep"]
    assert case["rc"] == 1, sweep.head_log()
    (record,) = sweep.records()
    assert record.status == "cancelled" and str(record.slurm_job_id) in (record.error or "")
    assert "Exited with exit code 143" in sweep.job_logs()  # the job's Python process did not exit 0
    assert "Bypassing sacct error" not in sweep.head_log()
    assert sweep.run_status() == "failed"  # cancelled, not waiting for a requeue
    return record


def test_scancel_without_accounting_ends_the_sweep(cases: dict[str, Future]) -> None:
    """Without slurmdbd sacct knows nothing: the head sees the job leave squeue without a result, records it
    `cancelled` with its job id and finishes, instead of polling sacct forever."""
    assert not ACCOUNTING, "the cluster without slurmdbd: scripts/slurm_local.sh run -- ..."
    record = _cancelled(result(cases, "test_scancel_without_accounting_ends_the_sweep"))
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
