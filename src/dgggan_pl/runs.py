"""Run folders: resuming one by name or the latest of an experiment, and leaving its records intact.

`python -m dgggan_pl.train <overrides> resume=latest` resumes the newest run of `outputs/<task_name>/runs/`
that has a `checkpoints/last.ckpt`; `resume=<run folder>` resumes that one. Hydra's `hydra.run.dir` and
`hydra.output_subdir` are computed by the resolvers below (registered when `dgggan_pl.train` is imported), so
a resumed run writes into its old folder, and Hydra's config files of the new attempt go to
`.hydra/resume-<time>/` instead of overwriting the ones of the run's start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from dgggan_pl.utils.atomic import remove_stale_temp_files as remove_temp_files_in

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LATEST = "latest"
HYDRA_SUBDIR = ".hydra"
RESUME_PREFIX = "resume-"
REFUSED_PREFIX = "refused-"
RUN_DIR_RESOLVER = "dgggan_run_dir"
CONFIG_SUBDIR_RESOLVER = "dgggan_config_subdir"
LOCK_FILE = ".run.lock"
RUN_RECORD = "run_info.json"  # written by dgggan_pl.callbacks.run_info
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


class ResumeError(FileNotFoundError):
    """`resume=...` or `ckpt_path=...` names no run or checkpoint that can be resumed."""


def attempt_stamp() -> str:
    """UTC time of this attempt, for the names of files that must not overwrite the run's earlier ones."""
    return datetime.now(timezone.utc).strftime(_STAMP_FORMAT)


def read_status(path: Path) -> str | None:
    """The `status` of an existing run record (None if absent or unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def recorded_status(run_dir: str | os.PathLike) -> str:
    """The status `run_info.json` holds (`failed`, `requeued`, ...), or `unknown` when it is absent or unreadable."""
    return str(read_status(Path(run_dir) / RUN_RECORD) or "unknown")


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def find_run_to_resume(resume: str, runs_root: str | os.PathLike) -> Path:
    """`latest` -> the newest run folder under `runs_root` holding a last.ckpt; a path -> that run folder."""
    if resume == LATEST:
        root = Path(runs_root)
        runs = sorted(p for p in root.glob("*") if last_checkpoint(p).is_file()) if root.is_dir() else []
        if not runs:
            raise ResumeError(
                f"resume=latest: no run with {CHECKPOINT_DIR}/{LAST_CHECKPOINT} under {root} "
                "(same experiment overrides as the run? or give resume=<run folder>)"
            )
        return runs[-1]
    run = Path(resume)
    if not last_checkpoint(run).is_file():
        raise ResumeError(f"resume={resume}: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} in that folder")
    return run


# A resume target that does not exist, found while Hydra resolved hydra.run.dir. Raising there would print
# Hydra's traceback; `dgggan_pl.train` raises it instead, as one line, before it writes anything.
_pending: list[ResumeError] = []


def _run_dir(resume: str | None, fresh: str) -> str:
    """hydra.run.dir: `fresh` (`outputs/<task>/runs/<time>`) for a new run, else the run to resume."""
    if resume is None:
        return fresh
    try:
        return str(find_run_to_resume(str(resume), Path(fresh).parent))
    except ResumeError as error:
        _pending.append(error)
        return fresh


def raise_pending_resume_error() -> None:
    """Raise the error `resume=...` met while Hydra chose the run folder (see `_run_dir`), once: a later run in
    the same process (tests, notebooks) does not inherit it."""
    if _pending:
        error = _pending[0]
        _pending.clear()
        raise error


def _config_subdir(resume: str | None, ckpt_path: str | None, run_dir: str | None = None) -> str:
    """hydra.output_subdir: `.hydra` for a new run; `.hydra/resume-<time>` when continuing an existing one;
    `.hydra/refused-<time>` (removed when `train` refuses the folder) for a new run into a folder that holds or
    runs another one, whose `.hydra/` it must not overwrite."""
    if resume is None and ckpt_path is None:
        occupied = run_dir is not None and any(
            (Path(run_dir) / name).exists() for name in (LOCK_FILE, RUN_RECORD)
        )
        return f"{HYDRA_SUBDIR}/{REFUSED_PREFIX}{attempt_stamp()}" if occupied else HYDRA_SUBDIR
    return f"{HYDRA_SUBDIR}/{RESUME_PREFIX}{attempt_stamp()}"


def register_resolvers() -> None:
    """Make `${dgggan_run_dir:...}` and `${dgggan_config_subdir:...}` available to conf/hydra (idempotent)."""
    OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, _run_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(CONFIG_SUBDIR_RESOLVER, _config_subdir, replace=True, use_cache=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, resume: str | None = None) -> str | None:
    """`last` (or `resume` set) -> `<output_dir>/checkpoints/last.ckpt`; a path must exist.

    Called before anything is written to the run folder, so a typo leaves a finished run untouched.
    """
    if ckpt_path is None and resume is not None:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    path = last_checkpoint(output_dir) if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (resume a run with resume=latest or resume=<run folder>)" if ckpt_path == "last" else ""
        raise ResumeError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    return str(path)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files a killed checkpoint write left in `<run>/checkpoints` (never a finished file)."""
    stale = remove_temp_files_in(run_dir / CHECKPOINT_DIR)
    for path in stale:
        log.info("removed %s, left by an interrupted checkpoint write", path)
    return stale


_HYDRA_LOG_GLOB = "*.log"  # Hydra's job log (`<job name>.log`) beside `.hydra/`


class RunFolderError(RuntimeError):
    """The run folder is in use by another run, or already holds a finished or failed run (not resumed)."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _lock_is_live(holder: dict) -> bool:
    """Whether the run that wrote a lock may still run: always when it ran on another host (unless it is this
    SLURM job's earlier incarnation, requeued), else when its process exists."""
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job and holder.get("slurm_job_id") == slurm_job:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and _process_alive(pid)


class RunLock:
    """`<run>/.run.lock` (owner's pid, host, SLURM job, start time) held while a run writes to its folder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock (a stale one is replaced, with a warning); `RunFolderError` when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            if holder is not None and _lock_is_live(holder):
                raise RunFolderError(
                    f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')}); wait for it or choose another "
                    f"hydra.run.dir (if that run is gone, delete {self.path})"
                )
            log.warning("removed the stale lock %s of a run that no longer runs (%s)", self.path, holder)
            self.path.unlink(missing_ok=True)
        raise RunFolderError(f"{self.path}: could not take the lock of the run folder; retry")

    def _create(self) -> bool:
        """Write the owner to a temp file and hard-link it as the lock: created complete, or not at all."""
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.owner), encoding="utf-8")
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if self.held:
            self.held = False
            self.path.unlink(missing_ok=True)


def refuse_finished_run(run_dir: Path, resuming: bool) -> None:
    """A new run must not write into a folder that holds another run's record (its checkpoints and records
    would mix); resuming that run is what continues it."""
    record = Path(run_dir) / RUN_RECORD
    if record.is_file() and not resuming:
        advice = (
            f"continue it with resume={run_dir}"
            if last_checkpoint(run_dir).is_file()
            else f"it saved no checkpoint to resume from: delete {run_dir} to start over there"
        )
        raise RunFolderError(
            f"{run_dir} already holds a run ({RUN_RECORD}); {advice}, or start a new run in another hydra.run.dir"
        )


def discard_refused_configs(run_dir: Path) -> None:
    """Remove the `.hydra/refused-<time>/` config copies of attempts refused by `RunLock`/`refuse_finished_run`."""
    for folder in (Path(run_dir) / HYDRA_SUBDIR).glob(f"{REFUSED_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def discard_unused_run_dir(run_dir: Path) -> bool:
    """Remove the folder Hydra created for an attempt that stopped before writing anything (e.g. resume=latest
    with no run): only Hydra's `.hydra/` and job log in it. Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    hydra_files = {run_dir / HYDRA_SUBDIR, *run_dir.glob(_HYDRA_LOG_GLOB)}
    if any(path not in hydra_files for path in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()
