"""W&B metric definitions for the dashboard: iterations on every x-axis, best and last values in the summary.

Without them W&B plots against Lightning's `trainer/global_step` (Lightning's own `define_metric("*")`) and its
runs table shows each metric's last value only, so sweeps cannot be compared on their best PI or LPIPS.
`python -m dgggan_pl.dashboard` builds its panels and columns on what this callback defines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from dgggan_pl.complexity import DEFAULT_LR_SIZE, count_gflops
from dgggan_pl.metrics.keys import benchmark_key  # the training module logs under the same function's keys
from dgggan_pl.metrics.registry import GOALS  # which way is better, per metric (metrics/registry.py)

GFLOPS_KEY = "model/generator_gflops"  # summary: the generator's cost, for the report's Table 2
ABLATION_KEY = "ablation"  # top-level W&B config key the dashboard groups runs by


def summary_of(metric: str) -> str:
    """define_metric's summary for a benchmark metric: its best value and its last one."""
    return f"{GOALS[metric]},last"


def generator_gflops(generator_config: Mapping[str, Any]) -> float:
    """GFLOPs of the configured generator at `complexity.DEFAULT_LR_SIZE`, built on `meta` (no memory, no time)."""
    with torch.device("meta"):
        generator = instantiate(generator_config)
    return count_gflops(generator, DEFAULT_LR_SIZE)


class WandbMetrics(Callback):
    """At setup, in every W&B run of the trainer (rank 0): the metric definitions, the ablation, the GFLOPs.

    Args:
        step_metric: the x-axis of every key (`trainer/iteration`, iterations done, logged with every row);
            `step_sync` fills it into rows that lack it.
        stages: prefixes of the benchmark keys (`val`, `test`) whose summaries keep best and last.
        ablation: the run's `ablation.name`, written as the top-level config key `ablation`.
    """

    def __init__(
        self,
        step_metric: str = "trainer/iteration",
        stages: Sequence[str] = ("val", "test"),
        ablation: str = "",
    ) -> None:
        self.step_metric = step_metric
        self.stages = tuple(stages)
        self.ablation = ablation
        self._done: set[str] = set()  # run ids already set up (fit, then test, call setup again)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        runs = [logger.experiment for logger in loggers if logger.experiment.id not in self._done]
        if not runs:
            return
        datamodule = getattr(trainer, "datamodule", None)  # a runtime attribute of Lightning's Trainer
        sets = {
            "val": list(getattr(datamodule, "val_set_names", [])),
            "test": list(getattr(datamodule, "test_set_names", [])),
        }
        gflops = generator_gflops(pl_module.hparams["model"]["generator"])
        for run in runs:
            self.define_metrics(run, sets)
            run.config.update({ABLATION_KEY: self.ablation}, allow_val_change=True)
            run.summary[GFLOPS_KEY] = gflops
            self._done.add(run.id)

    def define_metrics(self, run: Any, sets: Mapping[str, Sequence[str]]) -> None:
        """The step metric for all keys (replacing Lightning's), best+last summaries for the benchmark keys.

        W&B globs match prefixes only (`val/*`), so the benchmark keys are defined one by one.
        """
        run.define_metric(self.step_metric)
        run.define_metric("*", step_metric=self.step_metric, step_sync=True, overwrite=True)
        for stage in self.stages:
            for set_name in sets.get(stage, []):
                for metric in GOALS:
                    run.define_metric(
                        benchmark_key(stage, set_name, metric),
                        step_metric=self.step_metric,
                        step_sync=True,
                        summary=summary_of(metric),
                    )
