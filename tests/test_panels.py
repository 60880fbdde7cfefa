"""Validation panels and the captioned grid they are drawn with."""

from __future__ import annotations

import pytest
import torch

from dgggan_pl.callbacks.panels import PANEL_CAPTIONS, build_panel
from dgggan_pl.utils.labelled_grid import labelled_grid


def test_labelled_grid_layout_and_captions() -> None:
    red = torch.zeros(3, 20, 30)
    red[0] = 1.0
    grid = labelled_grid([[("a", red), ("b", red)], [("c", torch.zeros(3, 10, 10))]], gap=4, label_height=12)
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 12 + 20 + 4 + 12 + 10, 30 + 4 + 30)
    # The image sits under its caption band, pixel-exact.
    assert torch.equal(grid[:, 12:32, 0:30], (red * 255).to(torch.uint8))
    # The caption band is white except for dark text pixels of the caption.
    band = grid[:, :12, :30]
    assert (band.min(dim=0).values < 128).any(), "no caption drawn"
    assert (grid[:, :12, 30:34] == 255).all(), "the gap between images must stay white"


def test_labelled_grid_refuses_empty_rows() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        labelled_grid([[]])


def test_build_panel_has_a_caption_per_tile() -> None:
    lr = torch.rand(3, 8, 8)
    sr, hr = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    panel = build_panel(lr, sr, hr, None, crop=None)
    assert panel.dtype == torch.uint8
    captions_per_row = [len(row) for row in PANEL_CAPTIONS]
    assert captions_per_row == [4, 4]
    # Two captioned rows of four 32-pixel tiles.
    assert panel.shape[-1] == 4 * 32 + 3 * 4
    assert panel.shape[-2] == 2 * (14 + 32) + 4
    # The SR tile (third of the top row) is reproduced exactly under its caption.
    left = 2 * (32 + 4)
    assert torch.equal(panel[:, 14 : 14 + 32, left : left + 32], (sr * 255 + 0.5).to(torch.uint8))
