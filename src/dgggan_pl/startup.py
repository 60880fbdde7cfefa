"""Start-up decisions that every rank of a launch agrees on before anything is written to the run folder.

1. `claim_run`, on every rank: the config and the resume target are checked; rank 0 also decides the checkpoint
   to resume from (`resume=`, `ckpt_path=`, or `last.ckpt` when the launcher started this launch again:
   `runs.restarted_launch`), takes the folder's lock (`runs.RunLock`, which carries a random token) and
   refuses a folder that holds another run.
2. `agree_start`, through the group's store: every rank learns every other rank's verdict. Then each rank
   other than 0 checks that it sees rank 0's lock, with that token, in its own run folder (else the folder is
   not shared between the nodes: one line naming it) and that its resolved config is rank 0's; these
   verdicts are exchanged too.

When any rank refuses at either step, every rank raises at once: its own error, or `RankFailure` naming the
rank that refused; rank 0 releases the lock and the folder is left as it was. For one process both steps are
the local checks alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.callbacks.run_info import config_sha256
from dgggan_pl.config import ConfigError
from dgggan_pl.config_checks import check_config, check_objective
from dgggan_pl.data.datamodule import SRDataModule
from dgggan_pl.data.io import ImageFolderError
from dgggan_pl.distributed.cluster import RankLayout
from dgggan_pl.distributed.group import RankGroup
from dgggan_pl.distributed.watch import RankFailure
from dgggan_pl.objective import ObjectiveSpec
from dgggan_pl.resume_checks import check_resume
from dgggan_pl.runs import (
    LOCK_FILE,
    ResumeError,
    RunFolderError,
    RunLock,
    discard_unused_run_dir,
    last_checkpoint,
    lock_token,
    raise_pending_resume_error,
    refuse_finished_run,
    resolve_ckpt_path,
    restarted_launch,
)

REFUSALS = (ConfigError, ResumeError, RunFolderError, ImageFolderError)
CLAIM_STEP, FOLLOW_STEP = "claim", "follow"
_NAMED_DIFFERENCES = 3  # a config mismatch names at most this many keys


@dataclass(frozen=True)
class Claim:
    """What this rank starts with: the checkpoint to resume from (rank 0's decision, on every rank), whether the
    attempt continues a run in its folder, rank 0's lock on the folder (other ranks: none), and the objective
    parsed from `cfg.loss` (`config_checks.check_objective`), and the datamodule with its training and
    validation sets built (`prepare_data`)."""

    ckpt_path: str | None = None
    continuing: bool = False
    lock: RunLock | None = None
    objective: ObjectiveSpec | None = None
    datamodule: SRDataModule | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def abandon(self, output_dir: Path) -> None:
        """Release the lock of a run that does not start; a new run's folder goes too if it holds nothing else."""
        had_lock = self.lock is not None and self.lock.held
        self.release()
        if had_lock and not self.continuing:
            discard_unused_run_dir(output_dir)


def choose_checkpoint(cfg: DictConfig, output_dir: Path) -> tuple[str | None, bool]:
    """(checkpoint to resume from, whether this attempt continues a run in `output_dir`).

    `resume=`/`ckpt_path=` as given; without them, a launch that its launcher started again (SLURM requeue,
    torchrun restart) continues from its own `last.ckpt`, or starts over in its folder if it saved none.
    """
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume is None and ckpt_path is None and restarted_launch(output_dir):
        last = last_checkpoint(output_dir)
        return (str(last) if last.is_file() else None), True
    path = resolve_ckpt_path(ckpt_path, output_dir, resume)
    return path, path is not None


def prepare_data(cfg: DictConfig) -> SRDataModule:
    """`cfg.data` with its training and validation sets built, so that unreadable training images, or images
    smaller than the crop, are skipped and listed, or refused in one line, before any run record is written
    (not mid-fit); `fit` reuses it (its `setup` builds nothing twice)."""
    try:
        datamodule = instantiate(cfg.data)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError | ImageFolderError):
            raise error.__cause__ from None
        raise
    datamodule.setup("fit")
    return datamodule


def claim_run(cfg: DictConfig, output_dir: Path, layout: RankLayout) -> Claim:
    """Step 1 on this rank; raises its refusal (`REFUSALS`). Rank 0's claim holds the folder's lock."""
    try:
        raise_pending_resume_error()
        # Nothing is written before the config and the checkpoint to resume are known good. cfg.loss is parsed
        # once, here: the config checks, the warning, the module and the step budget receive that spec.
        objective = check_objective(cfg)
        check_config(cfg, objective=objective)
        datamodule = prepare_data(cfg)
        if not layout.is_zero:
            return Claim(objective=objective, datamodule=datamodule)
        ckpt_path, continuing = choose_checkpoint(cfg, output_dir)
        check_resume(cfg, ckpt_path, layout.world_size)  # a checkpoint this config cannot continue: one line
    except (ConfigError, ResumeError, ImageFolderError):
        if layout.is_zero and cfg.get("ckpt_path") is None:
            discard_unused_run_dir(output_dir)  # the folder Hydra made for this attempt holds nothing else
        raise
    lock = RunLock(output_dir).acquire()
    try:
        refuse_finished_run(output_dir, resuming=continuing)
    except RunFolderError:
        lock.release()
        raise
    return Claim(ckpt_path, continuing, lock, objective, datamodule)


def _raise_first_refusal(
    verdicts: list[dict[str, Any]],
    refusal: Exception | None,
    claim: Claim | None,
    output_dir: Path,
    step: str,
) -> None:
    """Every rank raises when any rank refused: its own error, else `RankFailure` naming the first that did."""
    refused = [(rank, verdict["error"]) for rank, verdict in enumerate(verdicts) if verdict["error"]]
    if not refused:
        return
    if claim is not None:
        claim.abandon(output_dir)
    if refusal is not None:
        raise refusal
    rank, error = refused[0]
    when = "to start" if step == CLAIM_STEP else "to follow rank 0"
    raise RankFailure(f"rank {rank} refused {when}: {error}")


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> value (as text) of a resolved config container."""
    if isinstance(node, Mapping):
        items: dict[str, str] = {}
        for key, value in node.items():
            items |= _flat(value, f"{prefix}{key}.")
        return items
    return {prefix.rstrip("."): repr(node)}


def _config_values(cfg: DictConfig) -> dict[str, str]:
    return _flat(OmegaConf.to_container(cfg, resolve=True))


def shared_folder_refusal(
    output_dir: Path, zero: Mapping[str, Any], layout: RankLayout, wait_s: float
) -> RunFolderError | None:
    """Why this rank cannot follow rank 0 into its run folder (None when it can): it must see rank 0's lock,
    with rank 0's token, in its own run folder within `wait_s` (a network filesystem may show a new file
    to other nodes a few seconds late)."""
    deadline = time.monotonic() + wait_s
    while lock_token(output_dir) != zero["token"]:
        if time.monotonic() >= deadline:
            elsewhere = (
                "" if str(output_dir.resolve()) == zero["run_dir"] else f" (rank 0's is {zero['run_dir']})"
            )
            return RunFolderError(
                f"the run folder {output_dir.resolve()} must be shared by every rank: rank {layout.global_rank} "
                f"(node {layout.node_rank}, host {socket.gethostname()}) does not see rank 0's {LOCK_FILE} in it"
                f"{elsewhere}; put the run folder on a filesystem that every node mounts at the same path"
            )
        time.sleep(min(0.2, wait_s))
    return None


def config_refusal(cfg: DictConfig, zero: Mapping[str, Any]) -> ConfigError | None:
    """Why this rank's resolved config is not rank 0's (None when it is): names the first keys that differ."""
    if config_sha256(cfg) == zero["config_sha256"]:
        return None
    mine, theirs = _config_values(cfg), zero["config"]
    differing = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    shown = ", ".join(
        f"{key} ({mine.get(key)} here, {theirs.get(key)} on rank 0)" for key in differing[:_NAMED_DIFFERENCES]
    )
    return ConfigError(
        f"the config differs from rank 0's at {shown}: start every rank with the same overrides and environment"
    )


def agree_start(
    group: RankGroup, cfg: DictConfig, output_dir: Path, claim: Claim | None, refusal: Exception | None
) -> Claim:
    """Step 2 (see the module docstring): returns this rank's claim with rank 0's checkpoint decision, or raises
    on every rank when any rank refused."""
    layout = group.layout
    mine: dict[str, Any] = {"error": str(refusal) if refusal is not None else None}
    if layout.is_zero and claim is not None and claim.lock is not None:
        mine |= {
            "token": claim.lock.token,
            "run_dir": str(output_dir.resolve()),
            "ckpt_path": claim.ckpt_path,
            "continuing": claim.continuing,
            "config_sha256": config_sha256(cfg),
            "config": _config_values(cfg) if layout.distributed else {},
        }
    claims = group.exchange(CLAIM_STEP, mine)
    _raise_first_refusal(claims, refusal, claim, output_dir, CLAIM_STEP)
    assert claim is not None  # no refusal on this rank
    zero = claims[0]
    verdict: Exception | None = None
    if not layout.is_zero:
        wait = group.settings.shared_folder_wait_s
        verdict = shared_folder_refusal(output_dir, zero, layout, wait) or config_refusal(cfg, zero)
    follow_refusal = verdict
    verdicts = group.exchange(FOLLOW_STEP, {"error": str(verdict) if verdict is not None else None})
    _raise_first_refusal(verdicts, follow_refusal, claim, output_dir, FOLLOW_STEP)
    return replace(claim, ckpt_path=zero["ckpt_path"], continuing=zero["continuing"])
