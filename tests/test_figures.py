"""`dgggan_pl.figures`: Figures 5 and 6 as PNGs and the comparison page, checked in real headless chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import TINY_GENERATOR_CONFIG
from dgggan_pl.config import compose_config
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.io import read_image, save_image
from dgggan_pl.figures import GAP, FigureError, crop_box, make_figures
from dgggan_pl.methods import bicubic_upscaler
from dgggan_pl.metrics.suite import _shared_lpips

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=15000",  # let every image load before the DOM is dumped
]
STATUS = re.compile(r'<span id="status"([^>]*)>')


def _config(data_dir: Path, out: Path, *overrides: str):
    from omegaconf import open_dict

    cfg = compose_config(
        [
            f"paths.data_dir={data_dir}",
            "sets=[Set5]",
            "progress=false",
            "metrics.lpips=random",
            "metrics.benchmark.metrics=[psnr,lpips]",  # the cheapest pair Figure 6 shows
            *overrides,
        ],
        config_name="figures",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.fixture(scope="module")
def figures(data_dir: Path, tmp_path_factory) -> Path:
    """bicubic, a random tiny checkpoint and a results folder (bicubic written to disk) on Set5."""
    root = tmp_path_factory.mktemp("figures")
    torch.manual_seed(0)
    state = {f"generator.{k}": v for k, v in instantiate(TINY_GENERATOR_CONFIG).state_dict().items()}
    ckpt = root / "tiny.ckpt"
    torch.save(
        {"state_dict": state, "hyper_parameters": {"model": {"generator": TINY_GENERATOR_CONFIG}}}, ckpt
    )
    upscale = bicubic_upscaler(4)
    for item in BenchmarkDataset(data_dir / "sr-benchmarks" / "Set5", 4):
        save_image(upscale(item["lr"][None])[0], root / "PUB" / "Set5" / f"{item['name']}_SR.png")
    models = f'models=[bicubic,{ckpt},"results:Published={root / "PUB"}"]'
    _shared_lpips.cache_clear()  # the shared LPIPS network warns when built: build it afresh for this check
    with pytest.warns(UserWarning, match="RANDOM"):
        make_figures(_config(data_dir, root / "out", models, "labels=[Bicubic,tiny,Published]"))
    return root / "out"


def test_figure5_shows_hr_its_gradient_and_the_sr_gradient_map(figures: Path, benchmark_dir: Path) -> None:
    figure = np.asarray(Image.open(figures / "figure5.png"))
    hr = read_image(benchmark_dir / "Set5" / "HR" / "baby.png").permute(1, 2, 0).numpy()  # 512 x 512
    height, width = hr.shape[:2]
    assert figure.shape[1] == 3 * width + 2 * GAP and figure.shape[0] > height  # three panels + captions
    assert np.array_equal(figure[:height, :width], hr), "panel (a) is the HR image itself"
    gradient = figure[:height, width + GAP : 2 * width + GAP].astype(int)
    assert (gradient[..., 0] == gradient[..., 1]).all(), "panel (b) is a grey-level map"
    flat, edge = gradient[300:310, 200:210].mean(), gradient.max()  # cheek (flat) vs the strongest edge
    assert flat < 40 and edge == 255, "G(HR) is dark on flat skin and saturates on edges"


def test_figure6_has_one_crop_per_method_with_metrics(figures: Path) -> None:
    figure = Image.open(figures / "figure6.png")
    tiles = 1 + 3  # HR + Bicubic, tiny, Published
    crop = 64 * 3  # figure6.crop_size x figure6.zoom
    assert figure.width == tiles * crop + (tiles - 1) * GAP
    pixels = np.asarray(figure)
    bicubic = pixels[:crop, crop + GAP : 2 * crop + GAP]
    published = pixels[:crop, 3 * (crop + GAP) : 3 * (crop + GAP) + crop]
    assert np.array_equal(bicubic, published), "the results folder holds bicubic: same crop"
    rows = {r["method"]: r for r in _csv(figures / "table3_psnr_ssim.csv")}
    assert rows["Published"]["Set5 PSNR"] == rows["Bicubic"]["Set5 PSNR"]


def _csv(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open()))


def test_page_is_self_contained_with_every_image_and_method(figures: Path) -> None:
    page = (figures / "comparison.html").read_text()
    assert not re.search(r"(src|href)=\"?https?:", page) and "fetch(" not in page
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert data["methods"] == ["Bicubic", "tiny", "Published"]
    assert [row["name"] for row in data["sets"]["Set5"]] == ["baby", "bird", "butterfly", "head", "woman"]
    for row in data["sets"]["Set5"]:
        for source in [row["hr"], *(m["src"] for m in row["methods"].values())]:
            assert (figures / source).is_file(), source
        assert set(row["methods"]["tiny"]["metrics"]) == {"psnr", "lpips_random_backbone"}


def test_crop_box_stays_inside_the_image() -> None:
    image = torch.zeros(3, 40, 50)
    image[:, 30:, 45:] = 1.0  # the only edge is in the bottom-right corner
    left, top, right, bottom = crop_box(image, 16, None)
    assert right - left == 16 and bottom - top == 16 and right <= 50 and bottom <= 40
    assert left >= 30 and top >= 20, "the crop goes where the gradient energy is"
    assert crop_box(image, 16, [0, 0]) == (0, 0, 16, 16)


def test_bad_figure_image_fails_before_work(data_dir: Path, tmp_path: Path) -> None:
    cfg = _config(data_dir, tmp_path, "figure5.image=Set14/baboon")
    with pytest.raises(FigureError, match="figure image 'Set14/baboon'"):
        make_figures(cfg)
    assert not list(tmp_path.iterdir()), "nothing was written"


# ------------------------------------------------------------------ real headless chromium
def render(page: Path, profile: Path, *extra: str) -> tuple[str, list[str]]:
    """(dumped DOM, console lines) of `page` in headless chromium with a fresh, empty profile."""
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")


@needs_chromium
def test_console_check_catches_errors(tmp_path: Path) -> None:
    """The detector is real: a page that throws is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
    _, console = render(bad, tmp_path / "profile")
    assert any("boom" in line for line in console) and any(
        "Uncaught ReferenceError" in line for line in console
    )


@needs_chromium
def test_page_renders_in_headless_chromium(figures: Path, tmp_path: Path) -> None:
    dom, console = render(figures / "comparison.html", tmp_path / "profile")
    assert console == [], console
    status = dict(re.findall(r'data-([a-z]+)="([^"]*)"', STATUS.search(dom).group(1)))
    assert status["state"] == "ready" and status["errors"] == "", status
    assert status["methods"] == "HR|Bicubic|tiny|Published" and status["panels"] == "4"
    assert dom.count('class="metrics"') == 4 and "psnr " in dom
