"""Run folders: resuming one by name or the latest of an experiment, and leaving its records intact.

`python -m dgggan_pl.train <overrides> resume=latest` resumes the newest run of `outputs/<task_name>/runs/`
that has a `checkpoints/last.ckpt`; `resume=<run folder>` resumes that one. Hydra's `hydra.run.dir` and
`hydra.output_subdir` are computed by the resolvers below (registered when `dgggan_pl.train` is imported), so
a resumed run writes into its old folder, and Hydra's config files of the new attempt go to
`.hydra/resume-<time>/` instead of overwriting the ones of the run's start.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LATEST = "latest"
HYDRA_SUBDIR = ".hydra"
RESUME_PREFIX = "resume-"
RUN_DIR_RESOLVER = "dgggan_run_dir"
CONFIG_SUBDIR_RESOLVER = "dgggan_config_subdir"
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
_TEMP_GLOB = ".*.tmp"  # dgggan_pl.utils.atomic's temp files: `.<name>.<random>.tmp` beside the target


class ResumeError(FileNotFoundError):
    """`resume=...` or `ckpt_path=...` names no run or checkpoint that can be resumed."""


def attempt_stamp() -> str:
    """UTC time of this attempt, for the names of files that must not overwrite the run's earlier ones."""
    return datetime.now(timezone.utc).strftime(_STAMP_FORMAT)


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
    """Raise the error `resume=...` met while Hydra chose the run folder (see `_run_dir`)."""
    if _pending:
        raise _pending[0]


def _config_subdir(resume: str | None, ckpt_path: str | None) -> str:
    """hydra.output_subdir: `.hydra` for a new run; `.hydra/resume-<time>` when continuing an existing one."""
    if resume is None and ckpt_path is None:
        return HYDRA_SUBDIR
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
    folder = run_dir / CHECKPOINT_DIR
    stale = sorted(folder.glob(_TEMP_GLOB)) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", path)
    return stale
