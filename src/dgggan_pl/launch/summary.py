"""The sweep's own record of its jobs (`<sweep_dir>/sweep_summary.json`), written by the launcher.

A job can fail before the app writes its `run_info.json` (a bad override, a crash at import): this file
is what tells `dgggan_pl.report` that such a job existed and why it failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dgggan_pl.utils.atomic import write_json_atomic

SUMMARY_FILE = "sweep_summary.json"


@dataclass
class JobRecord:
    """One sweep job as the launcher saw it; `status` is pending|running|completed|failed."""

    num: int
    overrides: list[str]
    output_dir: str | None = None
    command: list[str] = field(default_factory=list)
    processes: int | None = None
    status: str = "pending"
    returncode: int | None = None
    error: str | None = None
    seconds: float | None = None

    def label(self) -> str:
        """`#<num> (<overrides>)` for logs and error messages."""
        return f"#{self.num} ({' '.join(self.overrides)})"


def write_summary(sweep_dir: Path, launcher: str, jobs: list[JobRecord]) -> Path:
    """(Re)write the sweep summary; called after every job so a killed sweep still leaves a record."""
    path = sweep_dir / SUMMARY_FILE
    write_json_atomic(path, {"launcher": launcher, "jobs": [asdict(job) for job in jobs]}, sort_keys=False)
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
