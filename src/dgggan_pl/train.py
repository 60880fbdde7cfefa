"""Training entry point: `python -m dgggan_pl.train [experiment=full] [ablation=no_grad] [debug=smoke] ...`.

Refuses bad values before touching the run folder, composes the objects named in `conf/`, derives the Trainer's
step budget from `iterations`, fits, tests the selected AND the last checkpoint on `data.test_sets`, and
records the run in `<output_dir>/run_info.json`. `resume=latest` or `resume=<run folder>` continues a run in
its own folder (`dgggan_pl.runs`). The logger is closed even when the run fails (then the error is re-raised),
so one failed job does not poison a Hydra multirun.

Several processes (any launcher: torchrun, srun, Lightning's own, or MASTER_ADDR/NODE_RANK/LOCAL_RANK set by
hand) read their rank before anything is written (`distributed.cluster`), meet, agree on the start
(`dgggan_pl.startup`: rank 0 holds the folder, every rank must see it), and then train in one process group;
a rank that fails or is stopped ends every other rank within seconds (`distributed.watch`). docs/multinode.md.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.callbacks.checkpoint import AtomicCheckpointIO, MonitorFallbackCheckpoint
from dgggan_pl.callbacks.iteration import IterationAxis
from dgggan_pl.callbacks.run_info import RankRecord, RunRecord
from dgggan_pl.complexity import count_parameters
from dgggan_pl.config import ConfigError, config_dir
from dgggan_pl.config_checks import MAX_STEPS_MESSAGE, random_gan_start
from dgggan_pl.data.datamodule import SRDataModule, per_process_batch
from dgggan_pl.data.datasets import unreadable_training_files
from dgggan_pl.data.io import ImageFolderError
from dgggan_pl.distributed.cluster import (
    adopt_rank,
    check_layout,
    process_group_backend,
    start_node_processes,
    trainer_layout,
)
from dgggan_pl.distributed.group import GroupSettings, RankGroup, join, leave_joined
from dgggan_pl.distributed.watch import RankFailure
from dgggan_pl.launch.requeue import requeue_reason
from dgggan_pl.loggers import close_loggers, instantiate_loggers, record_unavailable
from dgggan_pl.metrics.perceptual import LPIPS_RANDOM_KEY
from dgggan_pl.metrics.suite import METRICS
from dgggan_pl.module import DGGGANModule
from dgggan_pl.objective import ObjectiveSpec
from dgggan_pl.runs import (
    REQUEUED,
    RESUME_PREFIX,
    ResumeError,
    RunFolderError,
    attempt_stamp,
    discard_unused_run_dir,
    last_checkpoint,
    recorded_status,
    register_resolvers,
    remove_stale_temp_files,
    write_hydra_record,
)
from dgggan_pl.startup import REFUSALS, Claim, agree_start, claim_run
from dgggan_pl.utils.atomic import write_text_atomic
from dgggan_pl.utils.exits import exit_on_signals, exit_status, interruption_line, report_interruption
from dgggan_pl.utils.noise import silence_dependency_noise
from dgggan_pl.weights import load_generator_state, load_state_dict_strict

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config_resolved.yaml"
RANDOM_LPIPS_REASON = f"random backbone (metrics.lpips=random, tests only), logged as {LPIPS_RANDOM_KEY}"
NOT_REQUESTED = "not requested (metrics.benchmark.metrics)"
# Lightning reports the end of fit in optimizer steps; this run reports iterations instead (`_finished`).
_LIGHTNING_STOP_MESSAGE = "`Trainer.fit` stopped: `max_steps="

register_resolvers()  # conf/hydra's run.dir and output_subdir use them (resume=...)


def derive_max_steps(cfg: DictConfig, objective: ObjectiveSpec | None = None) -> int:
    """Trainer.max_steps for `cfg.iterations`: Lightning counts every optimizer.step (`optimizer_steps`).

    `objective`: the run's (the module's `objective.spec`); parsed from `cfg.loss` when not given."""
    if cfg.trainer.get("max_steps") is not None:
        raise ConfigError(MAX_STEPS_MESSAGE)
    objective = objective or ObjectiveSpec.from_config(cfg.loss)
    return objective.optimizer_steps(int(cfg.iterations), cfg.optim)


def unavailable_metrics(metrics_cfg: DictConfig | None) -> dict[str, str]:
    """Metric -> reason for each metric of the protocol (psnr ... pi) that this run cannot report.

    Computed once per run from `cfg.metrics` and handed to the checkpoint selection, the run record and the
    loggers (the training module builds its own per-set metrics from the same cached networks).
    """
    if metrics_cfg is None:
        return dict.fromkeys(METRICS, "no metrics configured (metrics=null)")
    benchmark = instantiate(metrics_cfg.benchmark)()
    reasons = dict(benchmark.unavailable)
    computed = set(benchmark.scores) | set(benchmark.derived)
    for metric in METRICS:
        if metric in computed or metric in reasons:
            continue
        reasons[metric] = (
            RANDOM_LPIPS_REASON if metric == "lpips" and LPIPS_RANDOM_KEY in computed else NOT_REQUESTED
        )
    return reasons


def _is_checkpoint_callback(node: Any) -> bool:
    target = node.get("_target_") if isinstance(node, Mapping | DictConfig) else None
    return target is not None and issubclass(get_class(target), MonitorFallbackCheckpoint)


def instantiate_callbacks(node: DictConfig | None, unavailable: Mapping[str, str]) -> list[Callback]:
    """The configured callbacks; the checkpoint callback is given the metrics unavailable here."""
    callbacks = []
    for callback in (node or {}).values():
        if callback is None:
            continue
        extra = {"unavailable": dict(unavailable)} if _is_checkpoint_callback(callback) else {}
        callbacks.append(instantiate(callback, **extra))
    return callbacks


@rank_zero_only
def write_resolved_config(cfg: DictConfig, output_dir: Path, attempt: str) -> None:
    """The run folder keeps the fully resolved config (Hydra's `.hydra/config.yaml` keeps interpolations).

    A resumed attempt with a different config writes `config_resolved.resume-<time>.yaml` beside it.
    """
    text = OmegaConf.to_yaml(cfg, resolve=True)
    path = output_dir / RESOLVED_CONFIG
    if path.is_file():
        if path.read_text(encoding="utf-8") == text:
            return
        path = output_dir / f"{path.stem}.{RESUME_PREFIX}{attempt}{path.suffix}"
    write_text_atomic(path, text)


def _global_rank() -> int:
    """This process's rank (Lightning sets `rank_zero_only.rank` at runtime; its type does not declare it)."""
    return int(getattr(rank_zero_only, "rank", 0))


def build_module(cfg: DictConfig, objective: ObjectiveSpec | None = None) -> DGGGANModule:
    """The LightningModule from plain containers (checkpoints then load with weights_only=True).

    `objective`: `cfg.loss` as `check_objective` parsed it; parsed by the module when not given."""
    containers: dict[str, Any] = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else None
        for key in ("model", "loss", "optim", "metrics")
    }
    # The evaluation set names in the datamodule's dataloader order (SRDataModule: sets, then sources).
    set_names: dict[str, Any] = {
        f"{stage}_sets": [*cfg.data.get(f"{stage}_sets", []), *(cfg.data.get(f"{stage}_sources") or {})]
        for stage in ("val", "test")
    }
    module = DGGGANModule(**containers, seed=int(cfg.seed), **set_names, objective=objective)
    init_from = cfg.model.get("init_from")
    if init_from:
        load_state_dict_strict(module.generator, load_generator_state(init_from), init_from)
        if module.generator_ema is not None:
            module.generator_ema.load_state_dict(module.generator.state_dict())
        log.info("generator initialised from %s", init_from)
    if cfg.get("compile"):
        # In-place compile keeps the state-dict keys. The critics stay eager: the gradient penalty needs
        # double backward, which torch.compile does not support.
        module.generator.compile()
    return module


def log_run_summary(loggers: list[Logger], cfg: DictConfig, module: DGGGANModule, world_size: int) -> None:
    """The resolved run config, the model sizes and the batch, in every logger (and the W&B run summary)."""
    networks = {"generator": module.generator, "image_critic": module.image_critic}
    networks["gradient_critic"] = module.gradient_critic
    summary: dict[str, Any] = {
        f"model/{name}_params": count_parameters(net) if net is not None else 0
        for name, net in networks.items()
    }
    global_batch = int(cfg.data.batch_size)
    summary |= {
        "data/global_batch": global_batch,
        "data/per_process_batch": per_process_batch(global_batch, world_size),
        "data/world_size": world_size,
    }
    log.info(
        "batch: %d global = %d per process x %d process(es)",
        global_batch,
        summary["data/per_process_batch"],
        world_size,
    )
    run_config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"run": run_config, **summary})
        if isinstance(logger, WandbLogger) and _global_rank() == 0:
            logger.experiment.summary.update(summary)


def _float_metrics(metrics: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefixes)}


def _relative(path: Path, output_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(output_dir.resolve()))
    except ValueError:
        return str(path)


def evaluate_checkpoints(
    trainer: pl.Trainer, module: DGGGANModule, datamodule: LightningDataModule, output_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """Test `last.ckpt` and then the selected checkpoint; returns the selected one's `test/...` metrics and
    the record of both (path, iteration, metrics) with how the selected one was chosen."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):  # no checkpoints: test the weights in memory
        trainer.test(module, datamodule=datamodule)
        return _float_metrics(trainer.callback_metrics, ("test/",)), {}
    record: dict[str, Any] = {}
    if isinstance(callback, MonitorFallbackCheckpoint):
        record["selection"] = callback.selection()
    last = Path(callback.dirpath or output_dir) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    paths = {"last": last if last.is_file() else None}
    paths["selected"] = Path(callback.best_model_path) if callback.best_model_path else None
    for role, path in paths.items():  # the selected one last: its metrics end up in the W&B summary
        if path is None:
            continue
        trainer.test(module, datamodule=datamodule, ckpt_path=str(path), weights_only=True)
        record[role] = {
            "path": _relative(path, output_dir),
            "iteration": int(module.iteration),
            "metrics": _float_metrics(trainer.callback_metrics, ("test/",)),
        }
    chosen = record.get("selected") or record.get("last") or {"metrics": {}}
    return chosen["metrics"], record


def run_fit_and_test(
    cfg: DictConfig,
    output_dir: Path,
    loggers: list[Logger],
    ckpt_path: str | None,
    unavailable: Mapping[str, str],
    record: RunRecord | None = None,
    objective: ObjectiveSpec | None = None,
    datamodule: SRDataModule | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, then test the selected and the last checkpoint; returns the final metrics (those of the selected
    checkpoint's test) and the checkpoint record for run_info.json (`record` also gets the training images
    that were skipped as unreadable). `datamodule`: `cfg.data` as start-up built it (`startup.prepare_data`)."""
    if datamodule is None:
        datamodule = instantiate(cfg.data)
    module = build_module(cfg, objective)
    callbacks = [
        *instantiate_callbacks(cfg.get("callbacks"), unavailable),
        IterationAxis(),
        RankRecord(cfg, output_dir),
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=derive_max_steps(cfg, module.objective.spec),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    per_process_batch(int(cfg.data.batch_size), trainer.world_size)  # refuse before fitting
    log_run_summary(loggers, cfg, module, trainer.world_size)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        if record is not None:
            record.data["unreadable_training_files"] = unreadable_training_files(datamodule)
    log.info("trained %d iterations (%d optimizer steps)", module.iteration, trainer.global_step)
    metrics = _float_metrics(trainer.callback_metrics, ("val/",))
    checkpoints: dict[str, Any] = {}
    if datamodule.test_set_names:
        test_metrics, checkpoints = evaluate_checkpoints(trainer, module, datamodule, output_dir)
        metrics |= test_metrics
    return metrics, checkpoints


class _DropStepMessage(logging.Filter):
    """Lightning's end-of-fit line counts optimizer steps (`max_steps=1000000 reached` after 500k iterations)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_STOP_MESSAGE)


@rank_zero_only
def _announce(output_dir: Path, status: str) -> None:
    print(f"run folder ({status}): {output_dir.resolve()}", flush=True)


def warn_random_gan_start(
    cfg: DictConfig, ckpt_path: str | None, objective: ObjectiveSpec | None = None
) -> None:
    """One warning, from rank 0, when the GAN would train a random generator (`config_checks.random_gan_start`)."""
    message = random_gan_start(cfg, ckpt_path, objective=objective)
    if message is not None and _global_rank() == 0:
        log.warning(message)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) one configuration; returns the final `val/...` and `test/<Set>/<metric>` metrics.

    Rank 0 holds the run folder's lock (`runs.RunLock`) while the run writes there, and a new run refuses a
    folder that already holds another run's record. With several processes every rank takes part in these
    start-up decisions (`startup.agree_start`) before the process group exists (`distributed.group`).
    """
    output_dir = Path(cfg.paths.output_dir)
    try:
        shape = trainer_layout(cfg)
        layout = shape.layout()
        check_layout(layout, shape.num_nodes, shape.devices_per_node)
    except (ConfigError, RuntimeError, ValueError) as error:
        if cfg.get("ckpt_path") is None:
            discard_unused_run_dir(output_dir)  # every process refuses the same launch: nothing of it is kept
        raise error if isinstance(error, ConfigError) else ConfigError(str(error)) from None
    claim: Claim | None = None
    refusal: Exception | None = None
    try:
        claim = claim_run(cfg, output_dir, layout)
    except REFUSALS as error:
        refusal = error
    if layout.starts_node_processes:  # Lightning's launcher: refuse before this node's other processes exist
        if refusal is not None:
            raise refusal
        layout = start_node_processes(shape)
    adopt_rank(layout)
    completed = False

    def before_the_start(error: BaseException) -> str:
        """The watcher ends this rank before the ranks agreed to start (a child rank that died, a stop signal in
        the rendezvous): rank 0's lock goes, and a new run's folder with it."""
        if claim is not None:
            claim.abandon(output_dir)
        return _exit_line(error, "nothing of the run was written yet")

    try:
        group = join(layout, GroupSettings.from_config(cfg.distributed), exit_hook=before_the_start)
        claim = agree_start(group, cfg, output_dir, claim, refusal)
        metrics = _train_agreed(cfg, output_dir, claim, group)
        completed = True
        return metrics
    finally:
        if claim is not None:
            claim.release()
        leave_joined(completed)


def _train_agreed(cfg: DictConfig, output_dir: Path, claim: Claim, group: RankGroup) -> dict[str, float]:
    """The run every rank agreed to start; a failure here is published to the other ranks (`RankGroup.abort`),
    and a failure that follows another rank's is reported as that rank's (`RankFailure`)."""
    try:
        warn_random_gan_start(cfg, claim.ckpt_path, claim.objective)
        group.init_process_group(process_group_backend(cfg))
        return _train_in_run_dir(cfg, output_dir, claim, group)
    except BaseException as error:
        reported = group.failure_of(error)
        if reported is not error:
            raise reported from error
        raise


def _exit_line(error: BaseException, advice: str) -> str:
    """The one line of a rank that the watcher ends (`distributed.watch`): another rank's failure, or a signal."""
    if isinstance(error, RankFailure):
        return f"error: {error}"
    return interruption_line(error, "train", advice) or f"error: {error}"


def stop_advice(run_dir: str | Path) -> str:
    """What to do after `train` was stopped by a signal, from what its run folder says."""
    if recorded_status(run_dir) == REQUEUED:  # SIGTERM inside SLURM (scontrol requeue, preemption)
        return "run_info.json says requeued: SLURM restarts the job from its last.ckpt"
    if requeue_reason() is not None and _global_rank() != 0:  # rank 0 records the requeue, maybe not yet
        return "every rank saved last.ckpt for the requeue; rank 0's run_info.json says what SLURM did"
    return "run_info.json says failed; " + (
        f"continue with resume={run_dir}"
        if last_checkpoint(run_dir).is_file()
        else "no checkpoint was saved yet, so start it again"
    )


def _train_in_run_dir(cfg: DictConfig, output_dir: Path, claim: Claim, group: RankGroup) -> dict[str, float]:
    """`train` once its run folder is locked: the run record, the loggers, fit and test."""
    pl.seed_everything(cfg.seed, workers=True)
    attempt = attempt_stamp()
    if claim.continuing and _global_rank() == 0:
        remove_stale_temp_files(output_dir)
    record = RunRecord(cfg, output_dir, attempt)
    record.start()
    if _global_rank() == 0:
        write_hydra_record(output_dir, cfg, attempt, claim.continuing)
    write_resolved_config(cfg, output_dir, attempt)

    def last_words(error: BaseException) -> str:
        """Run by the watcher thread when it ends this rank (the main thread is stuck in a collective)."""
        record.fail(error)
        claim.release()
        return _exit_line(error, stop_advice(output_dir))

    group.set_exit_hook(last_words)
    loggers: list[Logger] = []
    try:
        unavailable = unavailable_metrics(cfg.get("metrics"))
        loggers = instantiate_loggers(cfg.get("logger"), resume=claim.ckpt_path is not None)
        record_unavailable(loggers, unavailable)
        metrics, checkpoints = run_fit_and_test(
            cfg, output_dir, loggers, claim.ckpt_path, unavailable, record, claim.objective, claim.datamodule
        )
    except BaseException as error:
        # Recorded before the others are told: once they end, torchrun's agent stops this rank too (SIGTERM),
        # possibly while rank 0 still waits for them to read its abort (`RankGroup.abort`).
        record.fail(error)
        reported: BaseException = error
        try:
            reported = group.failure_of(error)  # the others stop too; theirs, if another rank failed first
            if reported is not error:
                record.fail(reported)
        finally:
            close_loggers(loggers, failed=True)
            _announce(output_dir, "failed")
        if reported is not error:
            raise reported from error
        raise
    finally:
        group.set_exit_hook(None)
    record.complete(metrics, unavailable, checkpoints)
    close_loggers(loggers, failed=False)
    _announce(output_dir, "completed")
    return metrics


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropStepMessage())
    silence_dependency_noise()  # the litlogger tip and Lightning's LeafSpec deprecation (utils/noise.py)
    try:
        with exit_on_signals():  # Ctrl+C: exit 130, SIGTERM: 143 (utils/exits.py), one line each
            train(cfg)
    except RankFailure as error:  # another rank refused or failed: one line naming it, its exit status
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(error.status) from None
    except (ConfigError, ResumeError, RunFolderError, ImageFolderError, InstantiationException) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if not isinstance(cause, ConfigError | ResumeError | RunFolderError | ImageFolderError):
            raise
        raise SystemExit(f"error: {cause}") from None  # a bad value or path: one line, no traceback
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise SystemExit(f"error: {error.strerror}") from None  # disk full: what is left, where to go
    except BaseException as error:
        if exit_status(error) is None:
            raise
        raise SystemExit(report_interruption(error, "train", stop_advice(cfg.paths.output_dir))) from None


if __name__ == "__main__":
    main()
