"""Sub-image window arithmetic of SPSR's DIV2K preprocessing (docs/design.md#div2k-sub-images).

Windows of `crop` pixels start every `step` pixels; one extra window flush with the far edge is added only when
the pixels left uncovered exceed `threshold` (SPSR's `thres_sz`). With 480/240/48 on DIV2K train this gives
the paper's 32,208 sub-images; BasicSR's threshold 0 gives 32,592.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class WindowSpec:
    """Square windows: side `crop`, stride `step`, extra edge window when the leftover exceeds `threshold`."""

    crop: int
    step: int
    threshold: int

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.step <= 0 or self.threshold < 0:
            raise ValueError(f"invalid sub-image windows {self}: crop and step must be > 0, threshold >= 0")

    def scaled_down(self, scale: int) -> WindowSpec:
        """The LR windows aligned with these HR windows (480/240/48 -> 120/60/12 at x4)."""
        if self.crop % scale or self.step % scale or self.threshold % scale:
            raise ValueError(f"sub-image crop/step/threshold {self} must be divisible by the scale {scale}")
        return WindowSpec(self.crop // scale, self.step // scale, self.threshold // scale)


def window_starts(length: int, spec: WindowSpec) -> list[int]:
    """Start offsets along one axis (empty when `length < spec.crop`)."""
    if length < spec.crop:
        return []
    starts = list(range(0, length - spec.crop + 1, spec.step))
    if length - (starts[-1] + spec.crop) > spec.threshold:
        starts.append(length - spec.crop)
    return starts


def window_boxes(height: int, width: int, spec: WindowSpec) -> list[tuple[int, int]]:
    """`(top, left)` of every window, rows outer, columns inner (SPSR's `_s001`, `_s002`, ... order)."""
    return [(top, left) for top in window_starts(height, spec) for left in window_starts(width, spec)]


def count_subimages(height: int, width: int, spec: WindowSpec) -> int:
    return len(window_starts(height, spec)) * len(window_starts(width, spec))


def subimage_name(stem: str, index: int, suffix: str = ".png") -> str:
    """SPSR/BasicSR naming: `0001_s001.png` (index from 1)."""
    return f"{stem}_s{index + 1:03d}{suffix}"


def extract(image: Tensor, boxes: list[tuple[int, int]], crop: int) -> Iterator[Tensor]:
    """Crops `(C, crop, crop)` of `(C, H, W)` at the given boxes."""
    for top, left in boxes:
        yield image[:, top : top + crop, left : left + crop]
