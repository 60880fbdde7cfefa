"""`python -m dgggan_pl.figures`: the paper's Figures 5 and 6 and a browsable comparison page.

Runs the evaluation (`dgggan_pl.evaluate`, same `models`, `sets` and metrics, images saved), then writes to
`<paths.output_dir>`:

* `figure5.png`: HR, its gradient G(HR) and the SR gradient-branch map of one benchmark image (paper Fig. 5),
  the two maps on one shared scale so that they compare;
* `figure6.png`: the same zoomed crop of HR and every method, PSNR / LPIPS of the whole image under each
  (paper Fig. 6), one row per chosen image;
* `comparison.html`: one self-contained page (data inlined, images as relative files under `images/`, no
  server, no network) with every image of the evaluated sets, all methods side by side, synchronised zoom
  and pan, and the per-image metrics.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dgggan_pl.config import config_dir
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.io import read_image, save_image
from dgggan_pl.evaluate import (
    USER_ERRORS,
    PreflightError,
    prepare,
    report_user_error,
    run_methods,
    write_outputs,
)
from dgggan_pl.methods import Method
from dgggan_pl.metrics import registry
from dgggan_pl.metrics.fidelity import quantize_8bit
from dgggan_pl.metrics.tables import SetResult, safe_label
from dgggan_pl.models.contract import outputs_gradient_map
from dgggan_pl.models.gradient import gradient_magnitude
from dgggan_pl.utils.atomic import atomic_open, write_text_atomic
from dgggan_pl.utils.noise import silence_dependency_noise

log = logging.getLogger(__name__)
TEMPLATE = "page_template.html"
DATA_MARK = "/*DATA*/"
HR_LABEL = "HR"
FIGURE_FONT_SIZE = 14
CAPTION_LINE = 18  # px per caption line under a tile
GAP = 6  # px between tiles
BACKGROUND = (255, 255, 255)
GRADIENT_PERCENTILE = 99.5  # the maps are scaled so that this percentile of |G(HR)| is white


class FigureError(ValueError):
    """A figure's config names an image or model that the evaluation does not have."""


def split_image(spec: str, sets: Sequence[str]) -> tuple[str, str]:
    """`"Set5/baby"` -> ("Set5", "baby"); the set must be one of the evaluated `sets`."""
    set_name, sep, name = spec.partition("/")
    if not sep or set_name not in sets:
        raise FigureError(f"figure image {spec!r}: write <Set>/<name> with <Set> one of sets={list(sets)}")
    return set_name, name


def find_item(dataset: BenchmarkDataset, name: str) -> dict:
    names = [p.stem for p in dataset.hr_paths]
    if name not in names:
        raise FigureError(
            f"figure image {dataset.name}/{name}: no such HR image (e.g. {', '.join(names[:3])})"
        )
    return dataset[names.index(name)]


# ------------------------------------------------------------------ drawing
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FIGURE_FONT_SIZE)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def to_pil(image: Tensor) -> Image.Image:
    """`(3, H, W)` or `(1, H, W)` float in [0, 1] -> 8-bit RGB."""
    array = quantize_8bit(image.clamp(0, 1)[None])[0].to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")


def captioned(tile: Image.Image, lines: Sequence[str]) -> Image.Image:
    """`tile` with `lines` of text below it."""
    out = Image.new("RGB", (tile.width, tile.height + CAPTION_LINE * len(lines) + GAP // 2), BACKGROUND)
    out.paste(tile, (0, 0))
    draw, font = ImageDraw.Draw(out), _font()
    for i, line in enumerate(lines):
        draw.text((2, tile.height + 2 + i * CAPTION_LINE), line, fill=(0, 0, 0), font=font)
    return out


def stack(tiles: Sequence[Image.Image], horizontal: bool) -> Image.Image:
    """Tiles side by side (or one below the other), `GAP` px apart, top/left aligned."""
    if horizontal:
        size = (sum(t.width for t in tiles) + GAP * (len(tiles) - 1), max(t.height for t in tiles))
    else:
        size = (max(t.width for t in tiles), sum(t.height for t in tiles) + GAP * (len(tiles) - 1))
    out, offset = Image.new("RGB", size, BACKGROUND), 0
    for tile in tiles:
        out.paste(tile, (offset, 0) if horizontal else (0, offset))
        offset += (tile.width if horizontal else tile.height) + GAP
    return out


def save_png(image: Image.Image, path: Path) -> Path:
    with atomic_open(path, "wb") as stream:
        image.save(stream, format="PNG")
    return path


# ------------------------------------------------------------------ Figure 5
def gives_gradient_map(method: Method) -> bool:
    """Whether `method`'s generator outputs an SR gradient map (read from its output, so any generator answers)."""
    return method.generator is not None and outputs_gradient_map(method.generator)


def no_gradient_map(label: str) -> FigureError:
    return FigureError(
        f"figure5.model={label}: needs a generator whose output has a gradient map (a DGGGAN checkpoint with its "
        "gradient branch)"
    )


def figure5(method: Method, item: Mapping, device: torch.device) -> Image.Image:
    """HR | G(HR) | SR gradient-branch map, the two maps as grey levels on the scale of G(HR)."""
    hr = item["hr"][None]
    with torch.no_grad():
        grad_map = (
            None if method.generator is None else method.generator(item["lr"][None].to(device)).grad_map
        )
    if grad_map is None:
        raise no_gradient_map(method.label)
    grad_map = grad_map.float().cpu()
    hr_grad = gradient_magnitude(hr).mean(1, keepdim=True)
    sr_grad = grad_map.mean(1, keepdim=True)
    scale = float(np.percentile(hr_grad.numpy(), GRADIENT_PERCENTILE)) or 1.0
    tiles = [
        captioned(to_pil(hr[0]), ["(a) HR image"]),
        captioned(to_pil(hr_grad[0] / scale), ["(b) HR gradient G(HR)"]),
        captioned(to_pil(sr_grad[0] / scale), [f"(c) SR gradient ({method.label})"]),
    ]
    return stack(tiles, horizontal=True)


# ------------------------------------------------------------------ Figure 6
def crop_box(hr: Tensor, size: int, centre: Sequence[int] | None) -> tuple[int, int, int, int]:
    """`(left, top, right, bottom)` of a `size` square: around `centre` (x, y), else where G(HR) is largest."""
    _, height, width = hr.shape
    size = min(size, height, width)
    if centre is None:
        energy = gradient_magnitude(hr[None]).mean(1)  # (1, H, W)
        pooled = torch.nn.functional.avg_pool2d(energy[None], size, stride=max(1, size // 4))[0, 0]
        row, col = divmod(int(pooled.argmax()), pooled.shape[1])
        left, top = col * max(1, size // 4), row * max(1, size // 4)
    else:
        left, top = int(centre[0]) - size // 2, int(centre[1]) - size // 2
    left, top = min(max(0, left), width - size), min(max(0, top), height - size)
    return left, top, left + size, top + size


def metric_lines(values: Mapping[str, float], keys: Sequence[str]) -> list[str]:
    """`["PSNR 28.43 dB", "LPIPS 0.2531"]`, a random-backbone LPIPS named as such, missing values as n/a."""
    parts = []
    for key in (registry.displayed(k, values) for k in keys):
        metric, value = registry.spec(key), values.get(key)
        text = "n/a" if value is None else metric.format(value) if metric else f"{value:.3f}"
        parts.append(f"{metric.label if metric else key.upper()} {text}")
    return parts


def figure6_row(
    item: Mapping,
    sr_images: Mapping[str, Tensor],
    per_image: Mapping[str, Mapping[str, float]],
    box: tuple[int, int, int, int],
    zoom: int,
    keys: Sequence[str],
    title: str,
) -> Image.Image:
    """One row: the HR crop then each method's crop (nearest-neighbour `zoom`), metrics under each."""

    def tile(image: Tensor) -> Image.Image:
        crop = to_pil(image).crop(box)
        return crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)

    tiles = [
        captioned(tile(item["hr"]), [f"HR {title}", f"crop x={box[0]} y={box[1]}", f"{box[2] - box[0]} px"])
    ]
    for label, sr in sr_images.items():
        tiles.append(captioned(tile(sr), [label, *metric_lines(per_image[label], keys)]))
    return stack(tiles, horizontal=True)


# ------------------------------------------------------------------ the comparison page
def page_data(
    out_dir: Path,
    datasets: Mapping[str, BenchmarkDataset],
    methods: Sequence[Method],
    results: Mapping[str, Mapping[str, SetResult]],
) -> dict:
    """The page's inlined JSON: per set and image, the HR file and each method's SR file and metrics."""
    keys = {k for by_set in results.values() for r in by_set.values() for k in r.values}
    shown = [s for s in registry.specs() if s.key in keys]
    sets: dict[str, list[dict[str, object]]] = {}
    data = {
        "methods": [m.label for m in methods],
        "metric_keys": [s.key for s in shown],
        "metric_digits": {s.key: s.digits for s in shown},
        "sets": sets,
    }
    for set_name, dataset in datasets.items():
        rows: list[dict[str, object]] = []
        for hr_path in dataset.hr_paths:
            name = hr_path.stem
            hr_file = out_dir / "images" / HR_LABEL / set_name / f"{name}.png"
            width, height = Image.open(hr_file).size
            row: dict[str, object] = {
                "name": name,
                "size": f"{width}x{height}",
                "hr": hr_file.relative_to(out_dir).as_posix(),
            }
            row["methods"] = {
                m.label: {
                    "src": f"images/{safe_label(m.label)}/{set_name}/{name}.png",
                    "metrics": results[m.label][set_name].per_image.get(name, {}),
                }
                for m in methods
            }
            rows.append(row)
        sets[set_name] = rows
    return data


def render_page(data: Mapping) -> str:
    template = resources.files("dgggan_pl").joinpath(TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, indent=None).replace("</", "<\\/")  # never closes the <script> early
    return template.replace(DATA_MARK, payload)


def save_hr_images(out_dir: Path, datasets: Mapping[str, BenchmarkDataset]) -> None:
    """The (mod-cropped) HR images beside the SR ones, so that the page folder is self-contained."""
    for set_name, dataset in datasets.items():
        for hr_path in dataset.hr_paths:
            target = out_dir / "images" / HR_LABEL / set_name / f"{hr_path.stem}.png"
            hr = read_image(hr_path)
            scale = dataset.scale
            save_image(
                hr[:, : hr.shape[1] - hr.shape[1] % scale, : hr.shape[2] - hr.shape[2] % scale], target
            )


# ------------------------------------------------------------------ the command
def check_figure_config(cfg: DictConfig, methods: Sequence[Method]) -> Method | None:
    """Validate the figure keys before any work; returns the Figure 5 method (None: no row has a gradient map)."""
    if HR_LABEL in {m.label for m in methods}:
        raise FigureError(f"labels: {HR_LABEL!r} is the page's ground-truth column; choose another label")
    for spec in [cfg.figure5.image, *cfg.figure6.images]:
        split_image(spec, list(cfg.sets))
    with_maps = [m for m in methods if gives_gradient_map(m)]
    if cfg.figure5.model is None:
        return with_maps[0] if with_maps else None
    chosen = [m for m in methods if m.label == cfg.figure5.model]
    if not chosen:
        raise FigureError(
            f"figure5.model={cfg.figure5.model}: not a row label ({[m.label for m in methods]})"
        )
    if chosen[0] not in with_maps:
        raise no_gradient_map(cfg.figure5.model)
    return chosen[0]


def make_figures(cfg: DictConfig) -> list[Path]:
    """Evaluate (images saved), then write Figure 5, Figure 6 and the page; returns the files written."""
    cfg.save_images = True  # the page shows the saved SR images
    datasets, methods, device = prepare(cfg)
    fig5_method = check_figure_config(cfg, methods)
    results = run_methods(cfg, datasets, methods, device)
    write_outputs(cfg, methods, results)
    out_dir = Path(cfg.paths.output_dir)
    written = []
    if fig5_method is None:
        log.warning("figure 5 not written: it shows a generator's gradient map and no row of models has one")
    else:
        set_name, name = split_image(cfg.figure5.image, list(cfg.sets))
        item = find_item(datasets[set_name], name)
        written.append(save_png(figure5(fig5_method, item, device), out_dir / "figure5.png"))
    rows = []
    for spec in cfg.figure6.images:
        set_name, name = split_image(spec, list(cfg.sets))
        item = find_item(datasets[set_name], name)
        box = crop_box(item["hr"], cfg.figure6.crop_size, cfg.figure6.centre)
        sr_images = {
            m.label: read_image(out_dir / "images" / safe_label(m.label) / set_name / f"{name}.png").float()
            / 255
            for m in methods
        }
        per_image = {m.label: results[m.label][set_name].per_image[name] for m in methods}
        rows.append(
            figure6_row(item, sr_images, per_image, box, cfg.figure6.zoom, list(cfg.figure6.metrics), spec)
        )
    written.append(save_png(stack(rows, horizontal=False), out_dir / "figure6.png"))
    save_hr_images(out_dir, datasets)
    page = out_dir / cfg.page
    write_text_atomic(page, render_page(page_data(out_dir, datasets, methods, results)))
    written.append(page)
    for path in written:
        log.info("wrote %s", path)
    return written


@hydra.main(config_path=str(config_dir()), config_name="figures", version_base="1.3")
def main(cfg: DictConfig) -> None:
    silence_dependency_noise()
    try:
        written = make_figures(cfg)
    except (PreflightError, FigureError, *USER_ERRORS) as error:
        sys.exit(report_user_error(error))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
