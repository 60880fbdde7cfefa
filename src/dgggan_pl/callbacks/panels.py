"""Validation image panels: LR | bicubic | SR | HR, and G(HR) | G(SR) | SR gradient map, per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from dgggan_pl.callbacks.iteration import iterations_done
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import save_image
from dgggan_pl.loggers import ITERATION_KEY
from dgggan_pl.models.gradient import gradient_magnitude
from dgggan_pl.utils.labelled_grid import labelled_grid

PANEL_DIR = "panels"
PANEL_KEY = "val/panels"


def _center_crop(image: Tensor, size: int | None) -> Tensor:
    """`(C, H, W)` -> the central `(C, min(H, size), min(W, size))` window (None keeps the whole image)."""
    if size is None:
        return image
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


PANEL_CAPTIONS = (
    ("LR (nearest)", "bicubic (MATLAB)", "SR", "HR"),
    ("G(HR)", "G(SR)", "SR gradient branch", "|SR - HR| x 4"),
)


def build_panel(lr: Tensor, sr: Tensor, hr: Tensor, grad_map: Tensor | None, crop: int | None) -> Tensor:
    """`lr` `(3, h, w)`, `sr`/`hr`/`grad_map` `(3, sh, sw)` in [0, 1] -> a captioned uint8 `(3, H, W)` panel.

    Top row: LR (nearest) | MATLAB bicubic | SR | HR. Bottom row: G(HR) | G(SR) | SR gradient map (the
    generator's own, black without the branch) | |SR - HR| x 4. Both rows show the same central crop, each
    tile under its caption (`PANEL_CAPTIONS`).
    """
    scale = hr.shape[-1] // lr.shape[-1]
    lr_up = F.interpolate(lr[None], scale_factor=scale, mode="nearest")[0]
    bicubic = imresize(lr, scale=scale).clamp(0, 1)
    grad_hr, grad_sr = gradient_magnitude(hr[None])[0], gradient_magnitude(sr[None])[0]
    branch = grad_map.clamp(0, 1) if grad_map is not None else torch.zeros_like(sr)
    error = ((sr - hr).abs() * 4).clamp(0, 1)  # x4 so small errors are visible
    tiles = [lr_up, bicubic, sr, hr, grad_hr.clamp(0, 1), grad_sr.clamp(0, 1), branch, error]
    tiles = [_center_crop(t.float().cpu(), crop) for t in tiles]
    rows = [
        list(zip(captions, row, strict=True))
        for captions, row in zip(PANEL_CAPTIONS, (tiles[:4], tiles[4:]), strict=True)
    ]
    return labelled_grid(rows)


class ImagePanels(Callback):
    """Every validation: panels of the first `num_images` images of the first validation set.

    Written to `<output_dir>/panels/<iteration>_<name>.png` (rank 0) and logged to W&B as `val/panels` at the
    iteration (the step axis of every row).
    """

    def __init__(self, num_images: int = 2, crop: int | None = 256) -> None:
        self.num_images = num_images
        self.crop = crop
        self._panels: list[tuple[str, Tensor]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or len(self._panels) >= self.num_images:
            return
        grad_maps = outputs["grad_map"]
        for i in range(min(len(batch["name"]), self.num_images - len(self._panels))):
            grad_map = grad_maps[i] if grad_maps is not None else None
            panel = build_panel(batch["lr"][i], outputs["sr"][i], batch["hr"][i], grad_map, self.crop)
            self._panels.append((str(batch["name"][i]), panel))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._panels or not trainer.is_global_zero:
            return
        iteration = iterations_done(pl_module, trainer)
        folder = Path(trainer.default_root_dir) / PANEL_DIR
        for name, panel in self._panels:
            save_image(panel, folder / f"{iteration:07d}_{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                images = [
                    wandb.Image(panel, caption=f"{name}: LR|bicubic|SR|HR / G(HR)|G(SR)|branch|err")
                    for name, panel in self._panels
                ]
                # the iteration axis, like every other row (trainer/global_step = iteration, monotonic)
                # W&B's log_metrics takes media as well as numbers (Lightning types it for numbers only)
                logger.log_metrics({PANEL_KEY: images, ITERATION_KEY: iteration}, step=iteration)  # type: ignore[dict-item]
