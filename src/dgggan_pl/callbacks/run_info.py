"""Machine-readable run records: `run_info.json` (rank 0) and `ranks/rank<N>.json` (every rank).

Sweeps and the report read these instead of scraping logs; they are written atomically.
"""

from __future__ import annotations

import hashlib
import subprocess
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.launch import slurm_queue
from dgggan_pl.launch.requeue import requeue_left_to_slurm, requeue_reason
from dgggan_pl.runs import REQUEUED, RUN_RECORD, read_status
from dgggan_pl.utils.atomic import write_json_atomic

RUN_INFO_FILE = RUN_RECORD
RANK_DIR = "ranks"
COMPLETED = "completed"


def config_sha256(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config as sorted YAML: equal on every rank of one run."""
    return hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True).encode()).hexdigest()


def param_shapes_sha256(module: Any) -> str:
    """SHA-256 of every state-dict key with its shape: equal iff two ranks built the same networks."""
    lines = [f"{name}:{tuple(t.shape)}" for name, t in sorted(module.state_dict().items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def git_revision() -> str | None:
    """The checkout's HEAD commit, or None when the package does not run from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """`<output_dir>/run_info.json`: status running -> completed | failed | requeued, with the final metrics.

    A completed record is never replaced by a later attempt unless that attempt completes too: while a resumed
    attempt runs, its record is `run_info.attempt-<time>.json`, and when it fails it stays beside the completed
    one as `run_info.failed-<time>.json` (so `report` keeps the finished job).
    """

    def __init__(self, cfg: DictConfig, output_dir: Path, attempt: str) -> None:
        self.path = output_dir / RUN_INFO_FILE
        self.protects_completed = read_status(self.path) == COMPLETED
        stem, suffix = self.path.stem, self.path.suffix
        self.attempt_path = output_dir / f"{stem}.attempt-{attempt}{suffix}"
        self.failed_path = output_dir / f"{stem}.failed-{attempt}{suffix}"
        self.data: dict[str, Any] = {
            "status": "running",
            "ablation": cfg.get("ablation", {}).get("name"),
            "seed": cfg.get("seed"),
            "git_rev": git_revision(),
            "config_sha256": config_sha256(cfg),
            "started": _now(),
            "finished": None,
            "error": None,
            "metrics": {},
        }

    @rank_zero_only
    def _write(self, path: Path) -> None:
        write_json_atomic(path, self.data)

    @property
    def _running_path(self) -> Path:
        return self.attempt_path if self.protects_completed else self.path

    def start(self) -> None:
        self._write(self._running_path)

    def complete(
        self,
        metrics: dict[str, float],
        unavailable: dict[str, str] | None = None,
        checkpoints: dict[str, Any] | None = None,
    ) -> None:
        """`unavailable` (metric -> reason) lets reports say why a column is empty instead of guessing;
        `checkpoints` says which checkpoints were tested (selected and last) and how the selected one was chosen."""
        self.data |= {
            "status": COMPLETED,
            "finished": _now(),
            "metrics": metrics,
            "metrics_unavailable": dict(unavailable or {}),
            "checkpoints": dict(checkpoints or {}),
        }
        self._write(self.path)
        self._remove_attempt()

    def fail(self, error: BaseException) -> None:
        """A failed attempt, or one that ends to be requeued by SLURM (`requeued`: it resumes from last.ckpt)."""
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
        requeue = requeue_reason()
        if requeue is not None and (not requeue_left_to_slurm() or slurm_queue.this_job_requeued()):
            self.data |= {
                "status": REQUEUED,
                "finished": _now(),
                "error": f"waiting to be requeued: {requeue}",
            }
        else:
            self.data |= {"status": "failed", "finished": _now(), "error": message}
        self._write(self.failed_path if self.protects_completed else self.path)
        self._remove_attempt()

    @rank_zero_only
    def _remove_attempt(self) -> None:
        if self.protects_completed:
            self.attempt_path.unlink(missing_ok=True)


def weights_sha256(module: Any) -> str:
    """SHA-256 of every parameter's bytes, in name order: equal iff two ranks hold bit-identical weights."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankRecord(Callback):
    """Every rank writes `<output_dir>/ranks/rank<global_rank>.json` when fitting starts, and again at the end
    of training with `final_weights_sha256` per network.

    Sweeps check with it that all ranks of a job trained the same config and the same networks, and
    tests that DDP kept the ranks' weights identical.
    """

    NETWORKS = ("generator", "image_critic", "gradient_critic")

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.config_sha256 = config_sha256(cfg)
        self.output_dir = output_dir
        self.record: dict[str, Any] = {}

    def _write(self, trainer: Trainer) -> None:
        write_json_atomic(self.output_dir / RANK_DIR / f"rank{trainer.global_rank}.json", self.record)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "config_sha256": self.config_sha256,
            "param_shapes_sha256": param_shapes_sha256(pl_module),
        }
        self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        networks = {name: getattr(pl_module, name, None) for name in self.NETWORKS}
        self.record["final_weights_sha256"] = {
            name: weights_sha256(net) for name, net in networks.items() if net is not None
        }
        self.record["global_step"] = trainer.global_step
        self._write(trainer)
