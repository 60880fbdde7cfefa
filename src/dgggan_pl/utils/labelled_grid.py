"""Images side by side with a caption above each: validation panels, the README's before/after picture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

Captioned = tuple[str, Tensor]


def labelled_grid(rows: Sequence[Sequence[Captioned]], gap: int = 4, label_height: int = 14) -> Tensor:
    """Rows of `(caption, (3, H, W) float in [0, 1])` -> one uint8 `(3, H', W')` image on white.

    Every image of a row must have the row's height; rows may differ in width. The caption is drawn in black
    in a white band of `label_height` pixels above its image; `gap` white pixels separate images and rows.
    """
    if not rows or not all(rows):
        raise ValueError("labelled_grid needs at least one image in every row")
    widths = [sum(image.shape[-1] for _, image in row) + gap * (len(row) - 1) for row in rows]
    heights = [label_height + row[0][1].shape[-2] for row in rows]
    canvas = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for row, height in zip(rows, heights, strict=True):
        left = 0
        for caption, image in row:
            array = (image.float().cpu() * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(np.ascontiguousarray(array)), (left, top + label_height))
            draw.text((left + 2, top + 1), caption, fill="black")
            left += image.shape[-1] + gap
        top += height + gap
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
