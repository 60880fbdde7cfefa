"""SPSR's sub-image window arithmetic (docs/design.md#div2k-sub-images)."""

from __future__ import annotations

import pytest
import torch

from dgggan_pl.data.subimages import (
    WindowSpec,
    count_subimages,
    extract,
    subimage_name,
    window_boxes,
    window_starts,
)

HR = WindowSpec(480, 240, 48)
BASICSR = WindowSpec(480, 240, 0)


@pytest.mark.parametrize(
    ("length", "spec", "expected"),
    [
        (480, HR, [0]),  # exact fit: no leftover
        (528, HR, [0]),  # leftover 48 is not MORE than the threshold: no edge window
        (529, HR, [0, 49]),  # leftover 49 > 48: one window flush with the far edge
        (528, BASICSR, [0, 48]),  # BasicSR's threshold 0 adds it for any leftover
        (720, HR, [0, 240]),
        (768, HR, [0, 240]),  # leftover 48 again
        (2040, HR, [0, 240, 480, 720, 960, 1200, 1440, 1560]),  # DIV2K width: leftover 120
        (1356, HR, [0, 240, 480, 720, 876]),  # a common DIV2K height: leftover 156
        (479, HR, []),  # smaller than a window
    ],
)
def test_window_starts(length: int, spec: WindowSpec, expected: list[int]) -> None:
    assert window_starts(length, spec) == expected


def test_div2k_like_counts_and_lr_alignment() -> None:
    assert count_subimages(1356, 2040, HR) == 40  # DIV2K 0001-like: 5 x 8
    assert count_subimages(1248, 2040, HR) == 32  # leftover 48 rows dropped (threshold 48) ...
    assert count_subimages(1248, 2040, BASICSR) == 40  # ... but kept by BasicSR (threshold 0)
    lr_spec = HR.scaled_down(4)
    assert lr_spec == WindowSpec(120, 60, 12)
    for height, width in [(1356, 2040), (1248, 2040), (2040, 1404), (532, 1000)]:
        hr_boxes = window_boxes(height, width, HR)
        lr_boxes = window_boxes(height // 4, width // 4, lr_spec)
        assert [(t // 4, left // 4) for t, left in hr_boxes] == lr_boxes
        assert all(t % 4 == 0 and left % 4 == 0 for t, left in hr_boxes)


def test_boxes_row_major_and_names() -> None:
    assert window_boxes(529, 720, HR) == [(0, 0), (0, 240), (49, 0), (49, 240)]
    assert subimage_name("0001", 0) == "0001_s001.png" and subimage_name("0801", 40) == "0801_s041.png"
    image = torch.arange(3 * 529 * 720).reshape(3, 529, 720)
    crops = list(extract(image, window_boxes(529, 720, HR), 480))
    assert len(crops) == 4 and all(c.shape == (3, 480, 480) for c in crops)
    assert torch.equal(crops[3], image[:, 49:, 240:])


def test_invalid_specs() -> None:
    with pytest.raises(ValueError, match="divisible"):
        WindowSpec(480, 240, 50).scaled_down(4)
    with pytest.raises(ValueError, match="invalid"):
        WindowSpec(0, 240, 48)
