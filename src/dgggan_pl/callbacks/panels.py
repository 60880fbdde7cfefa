"""Validation image panels: LR | bicubic | SR | HR, and G(HR) | G(SR) | SR gradient map, per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import save_image
from dgggan_pl.models.gradient import gradient_magnitude

PANEL_DIR = "panels"


def _center_crop(image: Tensor, size: int | None) -> Tensor:
    """`(C, H, W)` -> the central `(C, min(H, size), min(W, size))` window (None keeps the whole image)."""
    if size is None:
        return image
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


def build_panel(lr: Tensor, sr: Tensor, hr: Tensor, grad_map: Tensor | None, crop: int | None) -> Tensor:
    """`lr` `(3, h, w)`, `sr`/`hr`/`grad_map` `(3, sh, sw)` in [0, 1] -> `(3, 2*P, 4*P)` panel.

    Top row: LR (nearest) | MATLAB bicubic | SR | HR. Bottom row: G(HR) | G(SR) | SR gradient map (the
    generator's own, black without the branch) | |SR - HR| x 4. Both rows show the same central crop.
    """
    scale = hr.shape[-1] // lr.shape[-1]
    lr_up = F.interpolate(lr[None], scale_factor=scale, mode="nearest")[0]
    bicubic = imresize(lr, scale=scale).clamp(0, 1)
    grad_hr, grad_sr = gradient_magnitude(hr[None])[0], gradient_magnitude(sr[None])[0]
    branch = grad_map.clamp(0, 1) if grad_map is not None else torch.zeros_like(sr)
    error = ((sr - hr).abs() * 4).clamp(0, 1)  # x4 so small errors are visible
    tiles = [lr_up, bicubic, sr, hr, grad_hr.clamp(0, 1), grad_sr.clamp(0, 1), branch, error]
    tiles = [_center_crop(t.float().cpu(), crop) for t in tiles]
    top, bottom = torch.cat(tiles[:4], dim=-1), torch.cat(tiles[4:], dim=-1)
    return torch.cat([top, bottom], dim=-2)


class ImagePanels(Callback):
    """Every validation: panels of the first `num_images` images of the first validation set.

    Written to `<output_dir>/panels/<iteration>_<name>.png` (rank 0) and logged to W&B as `val/panels`.
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
        iteration = getattr(pl_module, "iteration", trainer.global_step)
        folder = Path(trainer.default_root_dir) / PANEL_DIR
        for name, panel in self._panels:
            save_image(panel, folder / f"{iteration:07d}_{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="val/panels",
                    images=[panel for _, panel in self._panels],
                    caption=[
                        f"{name}: LR|bicubic|SR|HR / G(HR)|G(SR)|branch|err" for name, _ in self._panels
                    ],
                    step=trainer.global_step,
                )
