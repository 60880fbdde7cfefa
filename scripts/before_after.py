"""A before/after panel for the README: LR (nearest), MATLAB bicubic x4, DGGGAN x4 [, HR], one crop each.

    .venv/bin/python scripts/before_after.py --weights demo.ckpt --lr LR.png [--hr HR.png] \
        --box X Y SIZE --out docs/images/before_after.png

`--box` is the crop in LR pixels (top-left X, Y and side SIZE); panels are shown at the HR scale. The whole
image is upscaled (SE statistics are image-wide), then cropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from dgggan_pl import DGGGANGenerator, read_image, save_image
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import to_float
from dgggan_pl.utils.labelled_grid import labelled_grid

GAP = 8  # white pixels between panels
LABEL_HEIGHT = 16  # pixels above each panel for its caption


def panels(
    weights: Path, lr_path: Path, hr_path: Path | None, box: tuple[int, int, int]
) -> list[tuple[str, Tensor]]:
    """Crops of the LR box (x, y, size) for each panel at the HR scale: `(3, 4 size, 4 size)` in [0, 1]."""
    generator = DGGGANGenerator.from_pretrained(weights).enable_tiling()  # upscale's default tile
    scale = generator.scale
    lr = to_float(read_image(lr_path))
    x, y, size = box
    crop = (slice(None), slice(scale * y, scale * (y + size)), slice(scale * x, scale * (x + size)))
    sr = generator.upscale(lr).clamp(0, 1)
    result = [
        ("LR (nearest)", F.interpolate(lr.unsqueeze(0), scale_factor=scale, mode="nearest")[0][crop]),
        ("bicubic", imresize(lr, scale=scale).clamp(0, 1)[crop]),
        ("DGGGAN", sr[crop]),
    ]
    if hr_path is not None:
        result.append(("HR", to_float(read_image(hr_path))[crop]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--lr", type=Path, required=True, help="LR input image")
    parser.add_argument("--hr", type=Path, default=None, help="optional ground truth (x4 the LR size)")
    parser.add_argument("--box", type=int, nargs=3, metavar=("X", "Y", "SIZE"), required=True, help="LR crop")
    parser.add_argument("--out", type=Path, required=True, help="output PNG")
    args = parser.parse_args()
    # No inference_mode around loading: tiling measures receptive radii with autograd (it runs inference_mode).
    save_image(
        labelled_grid([panels(args.weights, args.lr, args.hr, tuple(args.box))], GAP, LABEL_HEIGHT), args.out
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
