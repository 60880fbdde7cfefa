"""Run folders: resuming one by name or the latest of an experiment, and leaving its records intact.

`python -m dgggan_pl.train <overrides> resume=latest` resumes the newest run of `outputs/<task_name>/runs/`
that has a `checkpoints/last.ckpt`; `resume=<run folder>` resumes that one. Hydra's `hydra.run.dir` and
`hydra.job.name` are computed by the resolvers below (registered when `dgggan_pl.train` is imported):

- a new run's folder is `outputs/<task_name>/runs/<time>`, or, when the launcher names the launch the same on
  every rank and again after a requeue or restart, `slurm-<job id>` / `torchrun-<rdzv id>`
  (`distributed.cluster.launch_folder_name`); without such a name the ranks of a launch take rank 0's folder
  (they meet for it: `distributed.group`), so one launch is one folder whatever starts its processes;
- a resumed run writes into its old folder;
- ranks other than 0 log to `<job name>_rank<r>.log`.

Hydra itself writes no config files (`hydra.output_subdir: null`): the run that holds the folder's lock writes
them (`write_hydra_record`), in `.hydra/` for a new run and `.hydra/resume-<time>/` when it continues one, so a
run refused at the lock never overwrites the record of the run that holds it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.utils.atomic import remove_stale_temp_files as remove_temp_files_in
from dgggan_pl.utils.atomic import unwritable_reason, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LATEST = "latest"
HYDRA_SUBDIR = ".hydra"
RESUME_PREFIX = "resume-"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra's output_subdir would hold
RUN_DIR_RESOLVER = "dgggan_run_dir"
JOB_NAME_RESOLVER = "dgggan_job_name"
LOCK_FILE = ".run.lock"
RUN_RECORD = "run_info.json"  # written by dgggan_pl.callbacks.run_info
REQUEUED = "requeued"  # a run record's status: SLURM saved last.ckpt and restarts the job from it
RUN_DIR_STEP = "run_dir"  # the start-up exchange in which the ranks take rank 0's new folder
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


class ResumeError(FileNotFoundError):
    """`resume=...` or `ckpt_path=...` names no run or checkpoint that can be resumed."""


class RunFolderCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): the run or sweep folder Hydra is about to create is created here
    first, so that one that cannot be (a file in its path, a read-only or missing mount) is one line naming the
    folder and the key, not the traceback Hydra prints from inside its job runner."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _create_or_refuse(config, "hydra.run.dir", "run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _create_or_refuse(config, "hydra.sweep.dir", "sweep folder")


def _create_or_refuse(config: DictConfig, key: str, what: str) -> None:
    folder = OmegaConf.select(config, key, default=None)
    if folder is None:
        return
    reason = unwritable_reason(str(folder))
    if reason is not None:
        raise SystemExit(f"error: {unwritable_folder_message(folder, reason, what, key)}")


def unwritable_folder_message(
    folder: str | Path, reason: str, what: str = "run folder", key: str = "hydra.run.dir"
) -> str:
    """The one line for a run or sweep folder this process cannot create or write to (`unwritable_reason`)."""
    return f"cannot write to the {what} {folder} ({reason}): make it writable or choose another {key}"


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


# An error met while Hydra resolved hydra.run.dir (a resume target that does not exist, ranks that did not meet).
# Raising there would print Hydra's traceback; `dgggan_pl.train` raises it instead, as one line, before it
# writes anything.
_pending: list[Exception] = []


def _launch_layout(root: Any) -> Any:
    """This process's rank layout for the run config `root` (None when it cannot be read: `train` then
    refuses the config itself)."""
    from dgggan_pl.distributed.cluster import trainer_layout

    if root is None or "trainer" not in root:
        return None  # not a training config (evaluate shares conf/hydra)
    try:
        return trainer_layout(root).layout()
    except Exception:
        return None


_agreed: dict[tuple[str | None, str], str] = {}  # (resume, fresh) -> rank 0's folder: the ranks meet once


def _agreed_with_rank_zero(layout: Any, root: Any, key: tuple[str | None, str], choice: str) -> str:
    """Rank 0's `choice` of the run folder, for every rank of a launch that names no folder itself."""
    from dgggan_pl.distributed.group import GroupSettings, join

    if key not in _agreed:
        group = join(layout, GroupSettings.from_config(root.distributed))
        _agreed[key] = str(group.exchange(RUN_DIR_STEP, choice)[0])
    return _agreed[key]


def _run_dir(resume: str | None, fresh: str, *, _root_: Any = None) -> str:
    """hydra.run.dir: the run to resume, else a new folder under `fresh`'s parent named after the launch
    (`slurm-<job>`, `torchrun-<id>`) or `fresh` (`outputs/<task>/runs/<time>`); several ranks without a launch
    name take rank 0's choice."""
    from dgggan_pl.distributed.cluster import launch_folder_name

    runs_root = Path(fresh).parent
    named = launch_folder_name() if resume is None else None
    try:
        choice = str(find_run_to_resume(str(resume), runs_root)) if resume is not None else fresh
    except ResumeError as error:
        _pending.append(error)
        choice = fresh
    if named is not None:
        return str(runs_root / named)
    layout = _launch_layout(_root_)
    if layout is None or not layout.distributed or layout.starts_node_processes:
        return choice  # one process, or Lightning's launcher: its children get this folder from it
    try:
        return _agreed_with_rank_zero(layout, _root_, (resume, fresh), choice)
    except Exception as error:  # every rank raises it in `train` before writing anything
        _pending.append(error)
        return choice


def _job_name(*, _root_: Any = None) -> str:
    """hydra.job.name: the app's name (`train`) on rank 0, `<name>_rank<r>` on rank r (its own log file)."""
    from hydra.core.utils import JobRuntime

    name = str(JobRuntime.instance().get("name"))
    layout = _launch_layout(_root_)
    return name if layout is None or layout.is_zero else f"{name}_rank{layout.global_rank}"


def raise_pending_resume_error() -> None:
    """Raise the error met while Hydra chose the run folder (see `_run_dir`), once: a later run in the same
    process (tests, notebooks) does not inherit it."""
    if _pending:
        error = _pending[0]
        _pending.clear()
        raise error


def register_resolvers() -> None:
    """Make `${dgggan_run_dir:...}` and `${dgggan_job_name:}` available to conf/hydra (idempotent)."""
    # Not cached (OmegaConf cannot cache a resolver that reads the config): `_run_dir` is a pure function of its
    # arguments except where the ranks agree, which happens once (`_agreed`).
    OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, _run_dir, replace=True)
    OmegaConf.register_new_resolver(JOB_NAME_RESOLVER, _job_name, replace=True)


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
    """`<run>/.run.lock` (owner's pid, host, SLURM job, start time) held while a run writes to its folder.

    Its random `token` lets the other ranks of the run check that they see the same folder (`lock_token`).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.token = secrets.token_hex(8)
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": self.token,
        }
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock (a stale one is replaced, with a warning); `RunFolderError` when a live run holds it
        or when the folder cannot be written (read-only)."""
        reason = unwritable_reason(self.path.parent)
        if reason is not None:
            raise RunFolderError(unwritable_folder_message(self.path.parent, reason))
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


def lock_token(run_dir: Path) -> str | None:
    """The token of the lock in `run_dir` (None when there is none or it cannot be read)."""
    try:
        holder = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder.get("token") if isinstance(holder, dict) else None


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


def restarted_launch(run_dir: Path) -> bool:
    """Whether this launch ran in `run_dir` before and its launcher started it again (a SLURM requeue or
    preemption, a torchrun restart): the folder is named after this launch (`slurm-<job>`, `torchrun-<id>`),
    holds its run record, and the launcher counts a restart or the record says `requeued`."""
    from dgggan_pl.distributed.cluster import launch_folder_name, restart_count

    run_dir = Path(run_dir)
    if run_dir.name != launch_folder_name() or not (run_dir / RUN_RECORD).is_file():
        return False
    return restart_count() > 0 or recorded_status(run_dir) == REQUEUED


def write_hydra_record(run_dir: Path, task_cfg: DictConfig, attempt: str, continuing: bool) -> Path | None:
    """Hydra's record of this attempt (`config.yaml`, `hydra.yaml`, `overrides.yaml`, as `hydra.output_subdir`
    would write them), written by the run that holds the folder's lock: `.hydra/` for a new run,
    `.hydra/resume-<time>/` for an attempt that continues one (never over the start's record). Returns the
    folder, or None outside a Hydra app (tests composing a config)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    folder = Path(run_dir) / HYDRA_SUBDIR
    if continuing:
        folder = folder / f"{RESUME_PREFIX}{attempt}"
    texts = (
        OmegaConf.to_yaml(task_cfg),
        OmegaConf.to_yaml(HydraConfig.instance().cfg),  # {"hydra": ...}, as Hydra saves it
        OmegaConf.to_yaml(HydraConfig.get().overrides.task),
    )
    for name, text in zip(HYDRA_FILES, texts, strict=True):
        write_text_atomic(folder / name, text)
    return folder


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
