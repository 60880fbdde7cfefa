"""The sweep's own record of its jobs (`<sweep_dir>/sweep_summary.json`), written by the launchers.

A job can fail before the app writes its `run_info.json` (a bad override, a crash at import, an interrupted
sweep): this file is what tells `dgggan_pl.report` that such a job existed and how it ended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgggan_pl.utils.atomic import write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.json"
# A job's life: pending -> running -> completed | failed | interrupted; "not started" when the sweep was
# interrupted (or aborted) before the job's turn. `submitted` is a SLURM job not collected yet; `cancelled`
# (scancel) and `lost` (gone from SLURM's queue without a result) are SLURM jobs that ended without finishing.
PENDING, SUBMITTED, RUNNING = "pending", "submitted", "running"
COMPLETED, FAILED, INTERRUPTED, NOT_STARTED = "completed", "failed", "interrupted", "not started"
CANCELLED, LOST = "cancelled", "lost"
ERROR_CHARS = 400  # of each failed job's error in the sweep's one-line error


class SweepError(SystemExit):
    """A sweep the launcher refuses or that ended with failed jobs: one `error: ...` line, exit status 1.

    A `SystemExit` on purpose: Hydra prints a traceback for any `Exception` that leaves a launcher, while the
    user needs only which key or job and what to do.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message


class SweepJobsFailed(SweepError):
    """Raised by the launcher after all jobs of its batch ended, when at least one of them did not complete."""


@dataclass
class JobRecord:
    """One sweep job as the launcher saw it (`status`: see the constants above)."""

    num: int
    overrides: list[str]
    output_dir: str | None = None
    command: list[str] = field(default_factory=list)
    processes: int | None = None
    status: str = PENDING
    returncode: int | None = None
    error: str | None = None
    seconds: float | None = None
    devices: str | None = None  # CUDA_VISIBLE_DEVICES given to the job (concurrent jobs), if any
    slurm_job_id: str | None = None

    def label(self) -> str:
        """`#<num> (<overrides>)` for logs and error messages."""
        return f"#{self.num} ({' '.join(self.overrides)})"


def write_summary(sweep_dir: Path, launcher: str, jobs: Sequence[JobRecord], **extra: Any) -> Path:
    """(Re)write the sweep summary; called at every change of a job's state, so a killed sweep leaves a record."""
    path = sweep_dir / SUMMARY_FILE
    payload = {"launcher": launcher, **extra, "jobs": [asdict(job) for job in jobs]}
    write_json_atomic(path, payload, sort_keys=False)
    return path


def read_summary(sweep_dir: Path) -> list[JobRecord]:
    """The job records of `sweep_dir`, or [] when the sweep was not run by one of our launchers."""
    path = sweep_dir / SUMMARY_FILE
    if not path.is_file():
        return []
    try:
        payload = json.loads(path.read_text())
        return [JobRecord(**job) for job in payload["jobs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a sweep summary written by dgggan_pl ({err}); delete or fix it"
        ) from err


def failures(jobs: Sequence[JobRecord], sweep_dir: Path) -> SweepJobsFailed | None:
    """The sweep's one-line error naming every job that did not complete (None when all did).

    Raised by the launcher instead of returning failed `JobReturn`s: Hydra's sweeper would re-raise the first
    of those with a traceback of its own frames and stop at that batch all the same.
    """
    failed = [job for job in jobs if job.status != COMPLETED]
    if not failed:
        return None
    return SweepJobsFailed(
        f"{len(failed)} of {len(jobs)} sweep jobs failed: "
        + "; ".join(f"{job.label()}: {_in_one_line(job.error)}" for job in failed)
        + f". Each job's status, folder and exit code: {sweep_dir / SUMMARY_FILE}"
    )


def _in_one_line(error: str | None) -> str:
    """A job's error on one line, at most ERROR_CHARS long (the summary keeps all of it: a SLURM job's error
    can hold its whole stderr)."""
    text = " ".join(str(error).split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 4] + " ..."
