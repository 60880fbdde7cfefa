"""Training entry point: `python -m dgggan_pl.train [experiment=full] [ablation=no_grad] [debug=smoke] ...`.

Composes the objects named in `conf/`, derives the Trainer's step budget from `iterations`, fits, tests on
`data.test_sets`, and records the run in `<output_dir>/run_info.json`. The logger is closed even when the run
fails (then the error is re-raised), so one failed job does not poison a Hydra multirun.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.callbacks.checkpoint import AtomicCheckpointIO
from dgggan_pl.callbacks.run_info import RankRecord, RunRecord
from dgggan_pl.complexity import count_parameters
from dgggan_pl.config import config_dir
from dgggan_pl.module import DGGGANModule, critics_enabled
from dgggan_pl.utils.atomic import write_text_atomic
from dgggan_pl.weights import load_generator, load_state_dict_strict

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RESOLVED_CONFIG = "config_resolved.yaml"
_WANDB_HOST = "api.wandb.ai"


def derive_max_steps(cfg: DictConfig) -> int:
    """Trainer.max_steps for `cfg.iterations`: Lightning counts every optimizer.step (feasibility.md §2).

    A GAN iteration steps the critic optimizer n_critic times and the generator once; a generator-only
    iteration (no critics, or before optim.gan_start_iteration) steps once.
    """
    if "max_steps" in cfg.trainer:
        raise ValueError(
            "trainer.max_steps is derived from `iterations` (each optimizer step counts); set iterations=N instead"
        )
    iterations = int(cfg.iterations)
    if not critics_enabled(cfg.loss.weights):
        return iterations
    warmup = min(int(cfg.optim.gan_start_iteration), iterations)
    return warmup + (iterations - warmup) * (1 + int(cfg.optim.n_critic))


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> `<output_dir>/checkpoints/last.ckpt`; a path must exist. Never starts fresh silently."""
    if ckpt_path is None:
        return None
    path = output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (resume a run by pointing hydra.run.dir at its folder)" if ckpt_path == "last" else ""
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    return str(path)


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


def instantiate_loggers(node: DictConfig | None) -> list[Logger]:
    """Build every logger of `cfg.logger`; W&B goes offline (with a note on syncing) when it must."""
    loggers: list[Logger] = []
    for name, logger_cfg in (node or {}).items():
        overrides: dict[str, Any] = {}
        if logger_cfg.get("_target_", "").endswith("WandbLogger"):
            reason = wandb_offline_reason()
            if reason is not None:
                overrides["offline"] = (
                    True  # an instantiate kwarg: the run config (and its hash) stays as given
                )
                _note(
                    f"W&B runs offline ({reason}); sync later with "
                    f"`wandb sync {logger_cfg.save_dir}/wandb/offline-run-*`"
                )
        log.debug("logger %s", name)
        loggers.append(instantiate(logger_cfg, **overrides))
    return loggers


def instantiate_callbacks(node: DictConfig | None) -> list[Callback]:
    return [instantiate(c) for c in (node or {}).values() if c is not None]


@rank_zero_only
def _note(message: str) -> None:
    log.warning(message)


@rank_zero_only
def write_resolved_config(cfg: DictConfig, output_dir: Path) -> None:
    """The run folder keeps the fully resolved config (Hydra's `.hydra/config.yaml` keeps interpolations)."""
    write_text_atomic(output_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def build_module(cfg: DictConfig) -> DGGGANModule:
    """The LightningModule from plain containers (checkpoints then load with weights_only=True)."""
    containers = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else None
        for key in ("model", "loss", "optim", "metrics")
    }
    module = DGGGANModule(**containers, seed=int(cfg.seed))
    init_from = cfg.model.get("init_from")
    if init_from:
        source, _ = load_generator(init_from)
        load_state_dict_strict(module.generator, source.state_dict(), init_from)
        if module.generator_ema is not None:
            module.generator_ema.load_state_dict(module.generator.state_dict())
        log.info("generator initialised from %s", init_from)
    if cfg.get("compile"):
        # In-place compile keeps the state-dict keys. The critics stay eager: the gradient penalty needs
        # double backward, which torch.compile does not support.
        module.generator.compile()
    return module


def log_run_summary(loggers: list[Logger], cfg: DictConfig, module: DGGGANModule) -> None:
    """The resolved run config and the model sizes, in every logger (and the W&B run summary)."""
    networks = {"generator": module.generator, "image_critic": module.image_critic}
    networks["gradient_critic"] = module.gradient_critic
    sizes = {
        f"model/{name}_params": count_parameters(net) if net is not None else 0
        for name, net in networks.items()
    }
    run_config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"run": run_config, **sizes})
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            logger.experiment.summary.update(sizes)


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Finish W&B runs (Lightning does not), so the next job of a multirun starts clean."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)


def _float_metrics(metrics: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefixes)}


def run_fit_and_test(
    cfg: DictConfig, output_dir: Path, loggers: list[Logger]
) -> tuple[dict[str, float], dict[str, str]]:
    """Fit, then test the best checkpoint; returns the final metrics and the metrics unavailable here (why)."""
    datamodule: LightningDataModule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = [*instantiate_callbacks(cfg.get("callbacks")), RankRecord(cfg, output_dir)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=derive_max_steps(cfg),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    log_run_summary(loggers, cfg, module)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _float_metrics(trainer.callback_metrics, ("val/",))
    if datamodule.test_set_names:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics |= _float_metrics(trainer.callback_metrics, ("test/",))
    return metrics, module.unavailable_metrics()


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) one configuration; returns the final `val/...` and `test/<Set>/<metric>` metrics."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    record = RunRecord(cfg, output_dir)
    record.start()
    write_resolved_config(cfg, output_dir)
    loggers: list[Logger] = []
    try:
        loggers = instantiate_loggers(cfg.get("logger"))
        metrics, unavailable = run_fit_and_test(cfg, output_dir, loggers)
    except BaseException as error:
        record.fail(error)
        close_loggers(loggers, failed=True)
        raise
    record.complete(metrics, unavailable)
    close_loggers(loggers, failed=False)
    return metrics


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
