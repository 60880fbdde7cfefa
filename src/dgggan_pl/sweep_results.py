"""Collect the outcome of every job of a sweep folder: launcher records merged with the jobs' run_info.json.

A job's own `run_info.json` (written by `dgggan_pl.train`, rank 0) carries its ablation, seed, git revision
and final test metrics; the launcher's `sweep_summary.json` knows about jobs that died before writing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dgggan_pl.launch.summary import JobRecord, read_summary

RUN_INFO_FILE = "run_info.json"
HYDRA_CONFIG_FILE = Path(".hydra") / "config.yaml"


@dataclass
class JobResult:
    """One job: where it ran, what it was, and how it ended (`status` completed|failed|incomplete)."""

    output_dir: Path
    num: int | None
    ablation: str
    status: str
    seed: Any = None
    git_rev: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """`#<num> <folder name>` (or the folder name alone when the launcher left no record)."""
        return f"#{self.num} {self.output_dir.name}" if self.num is not None else self.output_dir.name

    def config(self) -> DictConfig | None:
        """The job's task config as Hydra saved it (`.hydra/config.yaml`, unresolved), if present."""
        path = self.output_dir / HYDRA_CONFIG_FILE
        return OmegaConf.load(path) if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was the job killed while writing it?") from err


def _ablation_name(value: Any) -> str | None:
    """run_info's `ablation` may be the name or the whole `ablation` node."""
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _ablation_from_files(output_dir: Path, overrides: list[str]) -> str:
    """Ablation of a job without run_info: its saved config, else its `ablation=` override, else unknown."""
    config_path = output_dir / HYDRA_CONFIG_FILE
    if config_path.is_file():
        name = OmegaConf.select(OmegaConf.load(config_path), "ablation.name", default=None)
        if name:
            return name
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "ablation":
            return value
    return "unknown"


def _from_run_info(output_dir: Path, info: dict[str, Any], record: JobRecord | None) -> JobResult:
    status = str(info.get("status", "incomplete"))
    error = info.get("error")
    if record is not None and record.status == "failed" and status != "failed":
        status, error = (
            "failed",
            error or record.error,
        )  # e.g. a rank crashed hard after rank 0 wrote "running"
    elif status == "running":
        status, error = (
            "incomplete",
            error or "run_info.json still says running (job killed or still running)",
        )
    return JobResult(
        output_dir=output_dir,
        num=record.num if record else None,
        ablation=_ablation_name(info.get("ablation")) or _ablation_from_files(output_dir, []),
        status=status,
        seed=info.get("seed"),
        git_rev=info.get("git_rev"),
        error=error,
        metrics={k: float(v) for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float))},
        unavailable=dict(info.get("metrics_unavailable") or info.get("unavailable") or {}),
    )


def _from_record_only(record: JobRecord) -> JobResult:
    output_dir = Path(record.output_dir) if record.output_dir else Path(f"job{record.num}")
    error = record.error if record.status == "failed" else f"no {RUN_INFO_FILE} (launcher: {record.status})"
    return JobResult(
        output_dir=output_dir,
        num=record.num,
        ablation=_ablation_from_files(output_dir, record.overrides),
        status="failed" if record.status in ("failed", "completed") else "incomplete",
        error=error,
    )


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job of `sweep_dir`, in launch order (jobs without a launcher record last, by folder name)."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    records = {Path(r.output_dir).resolve(): r for r in read_summary(sweep_dir) if r.output_dir}
    unplaced = [r for r in read_summary(sweep_dir) if not r.output_dir]
    info_paths = sorted(sweep_dir.glob(f"*/{RUN_INFO_FILE}"))
    results = []
    for path in info_paths:
        job_dir = path.parent.resolve()
        results.append(_from_run_info(job_dir, _read_json(path), records.pop(job_dir, None)))
    results += [_from_record_only(r) for r in [*records.values(), *unplaced]]
    if not results:
        raise FileNotFoundError(
            f"no jobs in {sweep_dir}: neither */{RUN_INFO_FILE} nor a sweep_summary.json; pass the folder "
            "that `python -m dgggan_pl.train -m ...` printed as its sweep output dir"
        )
    return sorted(results, key=lambda r: (r.num is None, r.num if r.num is not None else 0, r.name))
