"""Experiment loggers shared by training and evaluation: W&B (offline when it must be), a CSV log that a
resumed run continues, and the one place that tells every logger which metrics cannot be computed here.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig

from dgggan_pl.utils.atomic import atomic_open, write_text_atomic

log = logging.getLogger(__name__)

_WANDB_HOST = "api.wandb.ai"
ITERATION_KEY = "trainer/iteration"  # every logged row carries it: iterations (generator updates) done
UNAVAILABLE_FILE = "metrics_unavailable.txt"  # beside the CSV log: one `metric: reason` line each
UNAVAILABLE_PREFIX = "metrics_unavailable"  # W&B summary keys `metrics_unavailable/<metric>`
_VERSION_PREFIX = "version_"


def wandb_offline_reason() -> str | None:
    """Why W&B must run offline here (WANDB_MODE=offline, or no API key configured), or None."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return "WANDB_MODE=offline"
    if os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{_WANDB_HOST}")).hostname or _WANDB_HOST
    try:
        if netrc.netrc().authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "no W&B API key configured (WANDB_API_KEY or `wandb login`)"


@rank_zero_only
def _note(message: str) -> None:
    log.warning(message)


def instantiate_loggers(node: DictConfig | None, resume: bool = False) -> list[Logger]:
    """Build every logger of `cfg.logger`; W&B goes offline (with a note on syncing) when it must.

    `resume=True` makes a `ResumableCSVLogger` continue the run's latest CSV log instead of opening a new one.
    """
    loggers: list[Logger] = []
    for name, logger_cfg in (node or {}).items():
        overrides: dict[str, Any] = {}
        target = logger_cfg.get("_target_", "")
        if target.endswith("WandbLogger"):
            reason = wandb_offline_reason()
            if reason is not None:
                overrides["offline"] = (
                    True  # an instantiate kwarg: the run config (and its hash) stays as given
                )
                _note(
                    f"W&B runs offline ({reason}); sync later with "
                    f"`wandb sync {logger_cfg.save_dir}/wandb/offline-run-*`"
                )
        if target.endswith(ResumableCSVLogger.__name__):
            overrides["resume"] = resume
        log.debug("logger %s", name)
        loggers.append(instantiate(logger_cfg, **overrides))
    return loggers


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Finish W&B runs (Lightning does not), so the next job of a multirun starts clean."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)


@rank_zero_only
def record_unavailable(loggers: list[Logger], unavailable: Mapping[str, str]) -> None:
    """Say once, where the user looks, why a metric is missing: the W&B run's summary and notes, and a
    `metrics_unavailable.txt` beside each CSV log."""
    if not unavailable:
        return
    lines = [f"{metric}: {reason}" for metric, reason in sorted(unavailable.items())]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update({f"{UNAVAILABLE_PREFIX}/{m}": r for m, r in unavailable.items()})
            run.notes = "\n".join(filter(None, [run.notes, "Metrics unavailable here:", *lines]))
        elif isinstance(logger, CSVLogger):
            _ = logger.experiment  # open the log folder first (Lightning warns about files already there)
            write_text_atomic(Path(logger.log_dir) / UNAVAILABLE_FILE, "\n".join(lines) + "\n")


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing `metrics.csv`; this one keeps its rows and header."""

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
            self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])

    def drop_steps_after(self, step: int) -> int:
        """Remove rows logged after `step` (they are about to be logged again); returns how many went."""
        self.save()
        if not os.path.isfile(self.metrics_file_path):
            return 0
        with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) <= step]
        if len(kept) != len(rows):
            with atomic_open(self.metrics_file_path, "w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)


def _latest_version(root: Path) -> int:
    """The highest `version_<n>` under `root` (0 when there is none yet)."""
    numbers = [
        int(path.name[len(_VERSION_PREFIX) :])
        for path in root.glob(f"{_VERSION_PREFIX}*")
        if path.is_dir() and path.name[len(_VERSION_PREFIX) :].isdigit()
    ]
    return max(numbers, default=0)


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose resumed run continues the same `metrics.csv` (one log folder per run).

    With `resume=True` (set by `dgggan_pl.train` when it resumes) and no explicit `version`, it reuses the run's
    latest `version_<n>` folder and keeps its rows; `drop_steps_after(iteration)` then removes the rows a killed
    run logged after its checkpoint, so no step appears twice.
    """

    def __init__(
        self,
        save_dir: str,
        name: str = "csv",
        version: int | str | None = None,
        resume: bool = False,
        **kwargs: Any,
    ) -> None:
        if resume and version is None:
            version = _latest_version(Path(save_dir) / name)
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self.resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer_type = _ContinuingWriter if self.resume else ExperimentWriter
            self._experiment = writer_type(log_dir=self.log_dir)
        return cast(ExperimentWriter, self._experiment)

    @rank_zero_only
    def drop_steps_after(self, step: int) -> None:
        """Called once the resumed iteration is known (after the checkpoint is restored)."""
        if isinstance(self.experiment, _ContinuingWriter):
            dropped = self.experiment.drop_steps_after(step)
            if dropped:
                log.info("CSV log continues after iteration %d (%d later rows dropped)", step, dropped)
