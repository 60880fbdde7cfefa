"""`python -m dgggan_pl.evaluate`: the paper's Tables 3 and 4 for generator checkpoints and the bicubic baseline.

Each method (a row) is run on each benchmark set, one image at a time (benchmark images differ in size), and
scored by the same `BenchmarkMetrics` the training module validates with. Results go to
`<paths.output_dir>`: `table3_psnr_ssim.{md,csv}`, `table4_pi_lpips.{md,csv}`, `per_image/<method>/<Set>.csv`,
optionally `images/<method>/<Set>/<name>.png`, and to the configured loggers (W&B).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from tqdm import tqdm

from dgggan_pl.config import config_dir
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import save_image
from dgggan_pl.metrics.fidelity import PIXEL_MAX, matlab_round
from dgggan_pl.metrics.perceptual import LPIPS_KEY, LPIPS_RANDOM_KEY
from dgggan_pl.metrics.suite import BenchmarkMetrics
from dgggan_pl.metrics.tables import SetResult, safe_label, write_tables

log = logging.getLogger(__name__)
BICUBIC = "bicubic"
Upscaler = Callable[[Tensor], Tensor]  # (1, 3, h, w) in [0, 1] -> (1, 3, s*h, s*w) in [0, 1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB `imresize(lr_uint8, scale, 'bicubic')` of the 8-bit LR image (the literature's bicubic row)."""

    def upscale(lr: Tensor) -> Tensor:
        lr_uint8 = matlab_round(lr.clamp(0, 1) * PIXEL_MAX).to(torch.uint8)
        return imresize(lr_uint8, scale=scale).to(torch.float32) / PIXEL_MAX

    return upscale


def generator_upscaler(path: str, use_ema: bool | None, device: torch.device, scale: int) -> Upscaler:
    """The generator stored at `path`, in eval mode on `device`."""
    from dgggan_pl.weights import load_generator

    generator, _ = load_generator(path, use_ema=use_ema, map_location=device)
    if generator.scale != scale:
        raise ValueError(f"{path}: generator scale is x{generator.scale} but the config has scale={scale}")

    @torch.no_grad()
    def upscale(lr: Tensor) -> Tensor:
        return generator(lr.to(device)).sr.clamp(0, 1)

    return upscale


def method_label(model: str) -> str:
    if model == BICUBIC:
        return "Bicubic"
    path = Path(model)
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "checkpoints" else path.stem


def build_methods(cfg: DictConfig, device: torch.device) -> dict[str, Upscaler]:
    models = list(cfg.models)
    if not models:
        raise ValueError("models: give at least one of `bicubic` or a checkpoint path")
    labels = list(cfg.labels) if cfg.labels is not None else [method_label(m) for m in models]
    if len(labels) != len(models) or len(set(labels)) != len(labels):
        raise ValueError(f"labels: need {len(models)} distinct names for models={models}, got {labels}")
    methods = {}
    for label, model in zip(labels, models, strict=True):
        if model == BICUBIC:
            methods[label] = bicubic_upscaler(cfg.scale)
        else:
            methods[label] = generator_upscaler(model, cfg.use_ema, device, cfg.scale)
    return methods


def evaluate_set(
    upscale: Upscaler,
    dataset: BenchmarkDataset,
    metrics: BenchmarkMetrics,
    device: torch.device,
    image_dir: Path | None = None,
    desc: str = "",
) -> SetResult:
    """Score every image of `dataset` on `device` (one at a time: sizes differ) and return the set's result."""
    for item in tqdm(dataset, desc=desc, unit="img", disable=desc == ""):
        sr = upscale(item["lr"][None].to(device)).to(device)
        hr = item["hr"][None].to(device)
        metrics.update(sr, hr, [item["name"]])
        if image_dir is not None:
            save_image(sr[0].cpu(), image_dir / f"{item['name']}.png")
    return SetResult(metrics.compute(), dict(metrics.unavailable), metrics.per_image())


def log_results(loggers: list, results: dict[str, dict[str, SetResult]], table_files: list[Path]) -> None:
    """Scalars `eval/<method>/<Set>/<metric>` to every logger; the CSV tables as W&B tables where supported."""
    flat = {
        f"eval/{label}/{set_name}/{key}": value
        for label, by_set in results.items()
        for set_name, result in by_set.items()
        for key, value in result.values.items()
    }
    for logger in loggers:
        logger.log_metrics(flat)
        if hasattr(logger, "log_table"):  # WandbLogger
            for path in table_files:
                header, *rows = list(csv.reader(path.open(encoding="utf-8")))
                logger.log_table(key=f"eval/{path.stem}", columns=header, data=rows)
        logger.finalize("success")


def evaluate(cfg: DictConfig) -> dict[str, dict[str, SetResult]]:
    """Run every method of `cfg.models` on every set of `cfg.sets`, write the tables; return the results."""
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.paths.output_dir)
    methods = build_methods(cfg, device)
    factory = instantiate(cfg.metrics.benchmark)
    results: dict[str, dict[str, SetResult]] = {label: {} for label in methods}
    for set_name in cfg.sets:
        dataset = BenchmarkDataset(Path(cfg.paths.benchmark_dir) / set_name, cfg.scale, cfg.lr_source)
        for label, upscale in methods.items():
            metrics = factory().to(device)
            image_dir = out_dir / "images" / safe_label(label) / set_name if cfg.save_images else None
            desc = f"{label} {set_name}" if cfg.progress else ""
            results[label][set_name] = evaluate_set(upscale, dataset, metrics, device, image_dir, desc)
            log.info("%s %s: %s", label, set_name, results[label][set_name].values)
    any_result = results[next(iter(results))][cfg.sets[0]]
    lpips_key = LPIPS_RANDOM_KEY if LPIPS_RANDOM_KEY in any_result.values else LPIPS_KEY
    written = write_tables(results, list(cfg.sets), out_dir, lpips_key)
    for path in written:
        log.info("wrote %s", path)
    from dgggan_pl.train import instantiate_loggers

    tables = [p for p in written if p.suffix == ".csv" and p.parent == out_dir]
    log_results(instantiate_loggers(cfg.get("logger")), results, tables)
    return results


@hydra.main(config_path=str(config_dir()), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg)
    table = Path(cfg.paths.output_dir) / "table3_psnr_ssim.md"
    print(table.read_text(encoding="utf-8"))
    print((Path(cfg.paths.output_dir) / "table4_pi_lpips.md").read_text(encoding="utf-8"))
    log.info("evaluated %d method(s) on %s", len(results), list(cfg.sets))


if __name__ == "__main__":
    main()
