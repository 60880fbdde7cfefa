"""The report's input: every job of a sweep folder (and any separate run folders), as one `JobResult` each.

A job's own `run_info.json` (written by `dgggan_pl.train`, rank 0) carries its ablation, seed, git revision,
the checkpoints it tested and their test metrics; the launcher's `sweep_summary.json` knows about jobs that
died, were interrupted or never started before writing one. Jobs are grouped into table rows by their
overrides (`JobResult.variant`): only seeds of one configuration are ever averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from dgggan_pl.callbacks.run_info import REQUEUED
from dgggan_pl.config import config_dir
from dgggan_pl.launch.devices import override_key
from dgggan_pl.launch.summary import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    LOST,
    NOT_STARTED,
    PENDING,
    JobRecord,
    read_summary,
)

RUN_INFO_FILE = "run_info.json"
HYDRA_DIR = Path(".hydra")
INCOMPLETE = "incomplete"  # started, never finished (killed, or still running)
FULL_MODEL = "none"  # the ablation name of the full model (run_info may record no ablation at all)
# Overrides that never separate two jobs into different rows (besides the folder-name exclusions).
ROW_NEUTRAL_KEYS = ("seed", "ablation")
CHECKPOINT_ROLES = ("selected", "last")
RECORDED = "recorded"  # run_info without a per-checkpoint record: its `metrics`, checkpoint unknown


@dataclass
class CheckpointResult:
    """The test of one checkpoint of a job: which file, after how many iterations, and its metrics."""

    role: str
    path: str | None = None
    iteration: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class JobResult:
    """One job: where it ran, what it was, how it ended (`status`) and the checkpoints it tested."""

    output_dir: Path | None
    num: int | None
    ablation: str
    status: str
    overrides: list[str] = field(default_factory=list)
    variant: str = ""
    seed: Any = None
    git_rev: str | None = None
    error: str | None = None
    checkpoints: dict[str, CheckpointResult] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    source: str = "sweep"  # or "baseline" (a run folder given separately)

    @property
    def name(self) -> str:
        """`#<num> <folder name>`, the folder name of a separate run, or `#<num>` for a job never started."""
        folder = self.output_dir.name if self.output_dir is not None else ""
        return f"#{self.num} {folder}".strip() if self.num is not None else folder

    def checkpoint(self, role: str) -> CheckpointResult | None:
        """The test of the `role` checkpoint; a record without roles serves any role (as `recorded`)."""
        return self.checkpoints.get(role) or self.checkpoints.get(RECORDED)

    def config(self) -> DictConfig | None:
        """The job's task config as Hydra saved it (`.hydra/config.yaml`, unresolved), if present."""
        path = self.output_dir / HYDRA_DIR / "config.yaml" if self.output_dir else None
        return cast(DictConfig, OmegaConf.load(path)) if path is not None and path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was the job killed while writing it?") from err


def _float_metrics(values: Any) -> dict[str, float]:
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float))}


def _checkpoints(info: dict[str, Any]) -> dict[str, CheckpointResult]:
    """run_info's `checkpoints` ({selected, last}: path, iteration, metrics), or its plain `metrics`."""
    record = info.get("checkpoints") or {}
    tested = {
        role: CheckpointResult(
            role, entry.get("path"), entry.get("iteration"), _float_metrics(entry.get("metrics"))
        )
        for role in CHECKPOINT_ROLES
        if isinstance(entry := record.get(role), dict)
    }
    if not tested and info.get("metrics"):
        tested[RECORDED] = CheckpointResult(RECORDED, metrics=_float_metrics(info.get("metrics")))
    return tested


def _saved_overrides(output_dir: Path) -> list[str] | None:
    path = output_dir / HYDRA_DIR / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else None


def folder_exclude_keys(output_dir: Path | None) -> list[str]:
    """The keys kept out of job folder names (the job's own `.hydra/hydra.yaml`, else conf/hydra's)."""
    path = output_dir / HYDRA_DIR / "hydra.yaml" if output_dir else None
    source = OmegaConf.load(path) if path is not None and path.is_file() else None
    if source is None:
        source = OmegaConf.create({"hydra": OmegaConf.load(config_dir() / "hydra" / "default.yaml")})
    keys = OmegaConf.select(source, "hydra.job.config.override_dirname.exclude_keys", default=None)
    return [str(k) for k in keys or []]


def variant_of(overrides: list[str], exclude_keys: list[str]) -> str:
    """What distinguishes a job's configuration from the others' beyond its ablation and seed: its sorted
    overrides without `+`/`~` prefixes, the folder-name exclusions and `seed`/`ablation`."""
    neutral = {*exclude_keys, *ROW_NEUTRAL_KEYS}
    kept = sorted(o.lstrip("+") for o in overrides if override_key(o) not in neutral)
    return " ".join(kept)


def _ablation_name(value: Any) -> str | None:
    """run_info's `ablation` may be the name or the whole `ablation` node."""
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _ablation_from_files(output_dir: Path | None, overrides: list[str]) -> str:
    """Ablation of a job without run_info: its saved config, else its `ablation=` override, else the full model."""
    config_path = output_dir / HYDRA_DIR / "config.yaml" if output_dir else None
    if config_path is not None and config_path.is_file():
        name = OmegaConf.select(OmegaConf.load(config_path), "ablation.name", default=None)
        if name:
            return str(name)
    for override in overrides:
        if override_key(override) == "ablation":
            return override.split("=", 1)[1]
    return FULL_MODEL


def _status(info_status: str | None, record: JobRecord | None) -> str:
    """One status from the job's own record and the launcher's: an interrupted sweep's jobs are
    `interrupted` (whatever Lightning made of the signal), a launcher-side failure wins over `running`."""
    launcher = record.status if record is not None else None
    if info_status == COMPLETED:
        return COMPLETED
    if launcher in (CANCELLED, LOST):  # a SLURM job that ended unfinished (its error says which)
        return FAILED
    if launcher in (INTERRUPTED, FAILED):
        return launcher
    if info_status == FAILED:
        return FAILED
    if info_status is not None:  # running (killed, or still running)
        return INCOMPLETE
    if launcher in (NOT_STARTED, PENDING):
        return NOT_STARTED
    if launcher == COMPLETED:
        return FAILED  # exit code 0 but no record: the app never wrote run_info.json
    return INCOMPLETE  # running / submitted, no record yet


def _error(status: str, info: dict[str, Any], record: JobRecord | None) -> str | None:
    if status == COMPLETED:
        return None
    launcher_error = record.error if record is not None else None
    if status == INTERRUPTED:
        return launcher_error
    if status == NOT_STARTED:
        return "the sweep stopped before this job started"
    if status == INCOMPLETE and info.get("status") == "running":
        return info.get("error") or "run_info.json still says running (job killed or still running)"
    if status == INCOMPLETE and info.get("status") == REQUEUED:
        return f"requeued by SLURM, not resumed yet ({info.get('error')})"
    if not info:
        return launcher_error or f"no {RUN_INFO_FILE} (launcher: {record.status if record else 'no record'})"
    return info.get("error") or launcher_error


def job_result(output_dir: Path | None, record: JobRecord | None, source: str = "sweep") -> JobResult:
    """Merge a job folder's run_info.json (if any) with the launcher's record of it (if any)."""
    info_path = output_dir / RUN_INFO_FILE if output_dir is not None else None
    info = _read_json(info_path) if info_path is not None and info_path.is_file() else {}
    folder = output_dir if output_dir is not None and output_dir.is_dir() else None
    overrides = (
        list(record.overrides) if record is not None else (_saved_overrides(folder) or []) if folder else []
    )
    status = _status(info.get("status") if info else None, record)
    ablation = _ablation_name(info.get("ablation")) if info else None
    return JobResult(
        output_dir=folder,
        num=record.num if record is not None else None,
        ablation=ablation or _ablation_from_files(folder, overrides),
        status=status,
        overrides=overrides,
        variant=variant_of(overrides, folder_exclude_keys(folder)),
        seed=info.get("seed"),
        git_rev=info.get("git_rev"),
        error=_error(status, info, record),
        checkpoints=_checkpoints(info) if status == COMPLETED else {},
        selection=dict((info.get("checkpoints") or {}).get("selection") or {}),
        unavailable=dict(info.get("metrics_unavailable") or info.get("unavailable") or {}),
        source=source,
    )


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job of `sweep_dir`, in launch order (jobs without a launcher record last, by folder name)."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    records = read_summary(sweep_dir)
    placed = {Path(r.output_dir).resolve(): r for r in records if r.output_dir}
    results = [job_result(Path(r.output_dir) if r.output_dir else None, r) for r in records]
    for path in sorted(sweep_dir.glob(f"*/{RUN_INFO_FILE}")):
        if path.parent.resolve() not in placed:
            results.append(job_result(path.parent.resolve(), None))
    if not results:
        raise FileNotFoundError(
            f"no jobs in {sweep_dir}: neither */{RUN_INFO_FILE} nor a sweep_summary.json; pass the folder "
            "that `python -m dgggan_pl.train -m ...` printed as its sweep output dir"
        )
    return sorted(results, key=lambda r: (r.num is None, r.num if r.num is not None else 0, r.name))


def collect_run(run_dir: Path) -> JobResult:
    """A single run folder (`python -m dgggan_pl.train ...` without -m), e.g. the full model's baseline."""
    if not (run_dir / RUN_INFO_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir / RUN_INFO_FILE} does not exist: pass a run folder of dgggan_pl.train"
        )
    return job_result(run_dir.resolve(), None, source="baseline")
