"""One step axis for everything a user sees: iterations (generator updates), never optimizer steps.

Lightning passes its loggers `fit_loop.epoch_loop._batches_that_stepped` (iteration - 1 while a training row is
written, and Trainer.global_step counts every optimizer step: 1 + n_critic per GAN iteration). Its
LoggerConnector uses a logged `step` value as the logger step instead, so this callback logs `step` and
`trainer/iteration` = iterations done into every training, validation and test row: the CSV `step` column, the
step W&B gets (its `trainer/global_step`, monotonic) and the key dashboards plot against are all iterations.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from dgggan_pl.loggers import ITERATION_KEY

STEP_KEY = "step"  # Lightning's LoggerConnector.log_metrics takes a logged `step` as the logger step
CHECKPOINT_ITERATION_KEY = "trainer/checkpoint_iteration"  # test rows: the iteration of the tested checkpoint


def iterations_done(pl_module: LightningModule, trainer: Trainer) -> int:
    """The module's iteration counter (restored on resume); Trainer.global_step only for other modules."""
    return int(getattr(pl_module, "iteration", trainer.global_step))


class IterationAxis(Callback):
    """Logs `step` and `trainer/iteration` = iterations done with every row; resumed CSV logs continue.

    Test rows (after fit, possibly of an earlier checkpoint) carry the run's iterations done, so the axis never
    goes back, and `trainer/checkpoint_iteration`, the iteration of the checkpoint tested.
    """

    def __init__(self) -> None:
        self.done = 0

    def _log(self, pl_module: LightningModule, iteration: int, epoch_level: bool) -> None:
        for key in (STEP_KEY, ITERATION_KEY):
            # float: Lightning logs floats; iterations stay exact in float32 up to 2**24
            pl_module.log(
                key, float(iteration), on_step=not epoch_level, on_epoch=epoch_level, sync_dist=epoch_level
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after a checkpoint is restored: drop rows a killed run logged after that checkpoint.
        self.done = iterations_done(pl_module, trainer)
        if trainer.ckpt_path is not None:
            for logger in trainer.loggers:
                drop = getattr(logger, "drop_steps_after", None)
                if drop is not None:
                    drop(self.done)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.done = iterations_done(pl_module, trainer)
        self._log(pl_module, self.done, epoch_level=False)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, iterations_done(pl_module, trainer), epoch_level=True)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tested = iterations_done(pl_module, trainer)
        self._log(pl_module, max(self.done, tested), epoch_level=True)
        pl_module.log(CHECKPOINT_ITERATION_KEY, float(tested), on_step=False, on_epoch=True, sync_dist=True)
