"""`python -m dgggan_pl.evaluate`: the paper's Tables 3 and 4 for checkpoints, bicubic and published results.

Each method (a row: `bicubic`, a checkpoint, or `results:<Label>=<folder>` of SR images, see
`dgggan_pl.methods`) is run on each benchmark set, one image at a time (benchmark images differ in size), and
scored by the same `BenchmarkMetrics` the training module validates with. Everything that can be checked
before work starts is (benchmark folders, results folders, checkpoints, metric model files): the CLI then
prints one line per problem and exits with status 2, never a traceback. Results go to `<paths.output_dir>`:
`table3_psnr_ssim.{md,csv}`, `table4_pi_lpips.{md,csv}` (PI, LPIPS and NIQE), `per_image/<method>/<Set>.csv`,
optionally `images/<method>/<Set>/<name>.png`, and to the configured loggers (W&B).
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dgggan_pl.config import config_dir
from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.io import ImageReadError, save_image
from dgggan_pl.methods import Method, MethodError, build_methods
from dgggan_pl.metrics.niqe import NIQEModelError
from dgggan_pl.metrics.perceptual import PretrainedWeightsMissing
from dgggan_pl.metrics.registry import unknown_metrics_message
from dgggan_pl.metrics.suite import BenchmarkMetrics, missing_model_files
from dgggan_pl.metrics.tables import SetResult, safe_label, write_tables
from dgggan_pl.runs import register_resolvers
from dgggan_pl.utils.noise import silence_dependency_noise
from dgggan_pl.weights import WeightsError

log = logging.getLogger(__name__)
register_resolvers()  # conf/hydra's run.dir and output_subdir use them
EXIT_ERROR = 2
# Errors a user fixes with a file or an override: reported as their one-line messages, without a traceback.
USER_ERRORS = (
    MethodError,
    WeightsError,
    NIQEModelError,
    PretrainedWeightsMissing,
    FileNotFoundError,
    ImageReadError,
)


class PreflightError(ValueError):
    """Files the run needs are missing; one line per file, each naming the override that skips it."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_datasets(cfg: DictConfig) -> dict[str, BenchmarkDataset]:
    """Every set of `cfg.sets` (a missing folder is an error naming it and `paths.benchmark_dir`)."""
    return {
        s: BenchmarkDataset(Path(cfg.paths.benchmark_dir) / s, cfg.scale, cfg.lr_source) for s in cfg.sets
    }


def preflight(cfg: DictConfig) -> None:
    """Refuse before any work an unknown metric or a metric's missing model file (no download is tried)."""
    bench = cfg.metrics.benchmark
    unknown = unknown_metrics_message(list(bench.metrics))
    if unknown:
        raise PreflightError(unknown)
    lines = missing_model_files(
        list(bench.metrics),
        bench.lpips,
        bench.niqe_model_path,
        list(bench.niqe_search_paths),
        bench.niqe_model_sha256,
        bench.on_missing_model,
        bool(bench.download),
    )
    if lines:
        raise PreflightError("\n".join(lines))


def evaluate_set(
    method: Method,
    dataset: BenchmarkDataset,
    metrics: BenchmarkMetrics,
    device: torch.device,
    image_dir: Path | None = None,
    desc: str = "",
) -> SetResult:
    """Score every image of `dataset` on `device` (one at a time: sizes differ) and return the set's result."""
    for item in tqdm(dataset, desc=desc, unit="img", disable=desc == ""):
        sr = method.sr(dataset.name, item, device)
        hr = item["hr"][None].to(device)
        metrics.update(sr, hr, [item["name"]])
        if image_dir is not None:
            save_image(sr[0].cpu(), image_dir / f"{item['name']}.png")
    unavailable = dict(metrics.unavailable)
    return SetResult(metrics.compute(), unavailable, metrics.per_image())


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


def prepare(cfg: DictConfig) -> tuple[dict[str, BenchmarkDataset], list[Method], torch.device]:
    """Everything checked before work: metric files, benchmark sets, results folders, checkpoints."""
    preflight(cfg)
    device = resolve_device(cfg.device)
    datasets = load_datasets(cfg)
    methods = build_methods(
        list(cfg.models),
        list(cfg.labels) if cfg.labels is not None else None,
        datasets,
        scale=cfg.scale,
        use_ema=cfg.use_ema,
        device=device,
        result_suffixes=list(cfg.result_suffixes),
    )
    return datasets, methods, device


def run_methods(
    cfg: DictConfig, datasets: dict[str, BenchmarkDataset], methods: list[Method], device: torch.device
) -> dict[str, dict[str, SetResult]]:
    """Score every method on every set (and save its images with `save_images`)."""
    out_dir = Path(cfg.paths.output_dir)
    factory = instantiate(cfg.metrics.benchmark)
    results: dict[str, dict[str, SetResult]] = {m.label: {} for m in methods}
    for set_name, dataset in datasets.items():
        for method in methods:
            metrics = factory().to(device)
            image_dir = out_dir / "images" / safe_label(method.label) / set_name if cfg.save_images else None
            desc = f"{method.label} {set_name}" if cfg.progress else ""
            results[method.label][set_name] = evaluate_set(method, dataset, metrics, device, image_dir, desc)
            log.info("%s %s: %s", method.label, set_name, results[method.label][set_name].values)
    return results


def write_outputs(
    cfg: DictConfig, methods: list[Method], results: dict[str, dict[str, SetResult]]
) -> list[Path]:
    """Tables 3 and 4 and the per-image CSVs under `paths.output_dir`, and the values to the loggers."""
    out_dir = Path(cfg.paths.output_dir)
    sources = {m.label: m.source for m in methods}
    written = write_tables(results, list(cfg.sets), out_dir, sources)
    for path in written:
        log.info("wrote %s", path)
    from dgggan_pl.loggers import instantiate_loggers

    tables = [p for p in written if p.suffix == ".csv" and p.parent == out_dir]
    log_results(instantiate_loggers(cfg.get("logger")), results, tables)
    return written


def evaluate(cfg: DictConfig) -> dict[str, dict[str, SetResult]]:
    """Run every method of `cfg.models` on every set of `cfg.sets`, write the tables; return the results."""
    datasets, methods, device = prepare(cfg)
    results = run_methods(cfg, datasets, methods, device)
    write_outputs(cfg, methods, results)
    return results


def report_user_error(error: Exception) -> int:
    """Print `error: <line>` for each line of a user-fixable error; the exit status to return."""
    for line in str(error).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return EXIT_ERROR


@hydra.main(config_path=str(config_dir()), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    silence_dependency_noise()
    try:
        results = evaluate(cfg)
    except (PreflightError, *USER_ERRORS) as error:
        sys.exit(report_user_error(error))
    out_dir = Path(cfg.paths.output_dir)
    print((out_dir / "table3_psnr_ssim.md").read_text(encoding="utf-8"))
    print((out_dir / "table4_pi_lpips.md").read_text(encoding="utf-8"))
    log.info(
        "evaluated %d method(s) on %s; tables in %s", len(results), OmegaConf.to_object(cfg.sets), out_dir
    )


if __name__ == "__main__":
    main()
