"""Run a sweep's prepared jobs on this machine, a few at a time, and stop them cleanly on a signal.

SIGINT, SIGTERM and SIGHUP received by the sweep process are forwarded to every running job's leader; no new
job starts; after `grace_s` (longer than torchrun's own 30 s shutdown) whatever is left of a job's process
group is killed. Running jobs end as `interrupted`, queued ones as `not started`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dgggan_pl.launch.processes import JobProcess
from dgggan_pl.launch.summary import COMPLETED, FAILED, INTERRUPTED, NOT_STARTED, RUNNING, JobRecord
from dgggan_pl.runs import RUN_RECORD

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def failed_job_left(output_dir: str | None) -> str:
    """Where to look after a job failed: its run record, else its log, else its own one line (a run refused at
    start keeps no folder, and pointing at one that is gone would send the user looking for nothing)."""
    folder = Path(output_dir) if output_dir else None
    if folder is not None and (folder / RUN_RECORD).is_file():
        return f"its log and {RUN_RECORD}: {folder}"
    if folder is not None and folder.is_dir():
        return f"it wrote no {RUN_RECORD}; its folder: {folder}"
    return "it refused to start and kept no folder: its own error line is in the output above"


@dataclass
class PreparedJob:
    """A job ready to start: its record (updated in place) and its argv."""

    record: JobRecord
    command: list[str]


@dataclass
class JobRunner:
    """`run(jobs)` starts each job in the first free slot; a slot is the environment its job gets on top of
    `base_env` (e.g. its own CUDA_VISIBLE_DEVICES). `on_change` is called after every job state change."""

    slots: Sequence[Mapping[str, str]]
    base_env: Mapping[str, str]
    on_change: Callable[[], None]
    grace_s: float = 45.0
    poll_s: float = 0.2
    signum: int | None = None
    _deadline: float | None = None
    _running: dict[int, tuple[JobRecord, JobProcess]] = field(default_factory=dict)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """First signal: forward it and start the grace period; a second one: kill at once."""
        if self.signum is None:
            self.signum, self._deadline = signum, time.monotonic() + self.grace_s
            log.warning(
                f"Received {signal.Signals(signum).name}: stopping {len(self._running)} running job(s) "
                f"(up to {self.grace_s:.0f} s), starting no new one"
            )
        else:
            self._deadline = time.monotonic()
        for _, process in self._running.values():
            process.forward(signum)

    def _start(self, slot: int, job: PreparedJob) -> None:
        job.record.devices = self.slots[slot].get("CUDA_VISIBLE_DEVICES")
        env = {**self.base_env, **self.slots[slot]}
        try:
            process = JobProcess(job.command, env)
        except OSError as err:
            job.record.status, job.record.error = FAILED, f"could not start: {err}"
            return
        job.record.status = RUNNING
        self._running[slot] = (job.record, process)
        devices = f" on CUDA_VISIBLE_DEVICES={job.record.devices}" if job.record.devices else ""
        log.info(f"#{job.record.num} started{devices}: {' '.join(job.command)}")

    def _finish(self, slot: int, returncode: int) -> None:
        record, process = self._running.pop(slot)
        process.kill_group()  # ranks that outlived their torchrun
        record.returncode, record.seconds = returncode, process.seconds()
        if returncode == 0:
            record.status = COMPLETED
        elif self.signum is not None:
            name = signal.Signals(self.signum).name
            record.status, record.error = INTERRUPTED, f"sweep received {name}; exit code {returncode}"
        else:
            record.status = FAILED
            record.error = f"exit code {returncode}; {failed_job_left(record.output_dir)}"
        log.info(f"#{record.num} {record.status} after {record.seconds} s")

    def run(self, jobs: Sequence[PreparedJob]) -> int | None:
        """Run `jobs`; returns the stop signal received (the jobs are then recorded as stopped), or None."""
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        queue = deque(jobs)
        try:
            while queue or self._running:
                free = [s for s in range(len(self.slots)) if s not in self._running]
                while self.signum is None and queue and free:
                    self._start(free.pop(0), queue.popleft())
                    self.on_change()
                    free = [s for s in range(len(self.slots)) if s not in self._running]
                for slot, (_, process) in list(self._running.items()):
                    returncode = process.poll()
                    if (
                        returncode is None
                        and self._deadline is not None
                        and time.monotonic() >= self._deadline
                    ):
                        log.warning(
                            f"#{self._running[slot][0].num} did not stop in time: killing its processes"
                        )
                        process.kill_group()
                        returncode = process.poll()
                    if returncode is not None:
                        self._finish(slot, returncode)
                        self.on_change()
                if self.signum is not None and not self._running:
                    break
                time.sleep(self.poll_s)
        finally:
            for job in queue:
                job.record.status = NOT_STARTED
            for slot in list(self._running):  # an exception in the loop itself: leave nothing behind
                self._running[slot][1].kill_group()
                self._finish(slot, self._running[slot][1].poll() or -signal.SIGKILL)
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.on_change()
        return self.signum


def exit_by_signal(signum: int) -> None:
    """End this process the way `signum` would have (exit status 128 + signum in a shell)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the default action is delivered before this returns
    raise SystemExit(128 + signum)
