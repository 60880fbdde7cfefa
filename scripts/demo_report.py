"""After `experiment=demo`: upscale a held-out sample image and write a Markdown metrics table.

Usage: python scripts/demo_report.py <demo folder>   (the run lives in <demo folder>/run; see `make demo`)
Writes <demo folder>/chelsea_lr.png, chelsea_hr.png, chelsea_bicubic_x4.png, chelsea_x4.png, metrics.md and
metrics.json (the same values, read by benchmarks/bench_demo.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from dgggan_pl.data.datamodule import SRDataModule
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import save_image, to_float
from dgggan_pl.data.sample_images import load_sample_image
from dgggan_pl.data.transforms import mod_crop
from dgggan_pl.utils.atomic import write_text_atomic

IMAGE = "chelsea"  # a validation image of data=sample: never seen in training


def bicubic_metrics(cfg, scale: int) -> dict[str, dict[str, float]]:
    """MATLAB-bicubic x`scale` on the demo's test sets, scored like the model (the reference row)."""
    datamodule: SRDataModule = instantiate(cfg.data)
    datamodule.setup("test")
    results = {}
    for name, loader in zip(datamodule.test_set_names, datamodule.test_dataloader(), strict=True):
        metrics = instantiate(cfg.metrics.benchmark)()
        for batch in loader:
            metrics.update(imresize(batch["lr"], scale=scale).clamp(0, 1), batch["hr"])
        results[name] = metrics.compute()
    return results


def metrics_table(run_metrics: dict[str, float], bicubic: dict, unavailable: dict[str, str]) -> str:
    rows = ["| set | method | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for set_name, values in bicubic.items():
        model = {k.split("/")[-1]: v for k, v in run_metrics.items() if k.startswith(f"test/{set_name}/")}
        for method, scores in (("bicubic (MATLAB)", values), ("DGGGAN demo", model)):
            cells = [f"{scores[m]:.4f}" if m in scores else "unavailable" for m in METRICS]
            rows.append(f"| {set_name} | {method} | " + " | ".join(cells) + " |")
        difference = [f"{model[m] - values[m]:+.4f}" if m in model and m in values else "" for m in METRICS]
        rows.append(f"| {set_name} | **demo - bicubic** | " + " | ".join(difference) + " |")
    notes = [f"- {metric}: unavailable ({reason})" for metric, reason in sorted(unavailable.items())]
    return "\n".join(rows + ["", *notes]) + "\n"


METRICS = ["psnr", "ssim", "lpips", "niqe", "pi"]


def metrics_record(info: dict, bicubic: dict, unavailable: dict[str, str]) -> dict:
    """Per set: the demo model's and bicubic's metrics and their difference; the run's start and finish."""
    sets = {}
    for set_name, values in bicubic.items():
        model = {k.split("/")[-1]: v for k, v in info["metrics"].items() if k.startswith(f"test/{set_name}/")}
        common = [m for m in METRICS if m in model and m in values]
        sets[set_name] = {
            "demo": {m: float(model[m]) for m in common},
            "bicubic": {m: float(values[m]) for m in common},
            "gain": {m: float(model[m] - values[m]) for m in common},
        }
    return {
        "sets": sets,
        "unavailable": unavailable,
        "started": info["started"],
        "finished": info["finished"],
    }


def main(demo_dir: Path) -> None:
    run_dir = demo_dir / "run"
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    info = json.loads((run_dir / "run_info.json").read_text())
    if info["status"] != "completed":
        sys.exit(f"{run_dir / 'run_info.json'}: the demo run did not complete ({info['error']})")

    hr = mod_crop(load_sample_image(IMAGE), cfg.scale)
    lr_path, sr_path = demo_dir / f"{IMAGE}_lr.png", demo_dir / f"{IMAGE}_x4.png"
    save_image(imresize(hr, scale=1 / cfg.scale), lr_path)
    save_image(hr, demo_dir / f"{IMAGE}_hr.png")  # the ground truth of the README's before/after panel
    save_image(
        imresize(to_float(imresize(hr, scale=1 / cfg.scale)), scale=cfg.scale).clamp(0, 1),
        demo_dir / f"{IMAGE}_bicubic_x4.png",
    )
    weights = run_dir / "checkpoints" / "last.ckpt"
    upscale = [
        sys.executable,
        "-m",
        "dgggan_pl.upscale",
        "--weights",
        str(weights),
        str(lr_path),
        str(sr_path),
    ]
    subprocess.run([*upscale, "--overwrite"], check=True)

    unavailable = dict(instantiate(cfg.metrics.benchmark)().unavailable)
    bicubic = bicubic_metrics(cfg, cfg.scale)
    table = metrics_table(info["metrics"], bicubic, unavailable)
    write_text_atomic(
        demo_dir / "metrics.json", json.dumps(metrics_record(info, bicubic, unavailable), indent=1)
    )
    write_text_atomic(demo_dir / "metrics.md", f"# DGGGAN demo ({cfg.iterations} iterations, CPU)\n\n{table}")
    print(table)
    print(f"Upscaled image: {sr_path} (input {lr_path}, bicubic {demo_dir / f'{IMAGE}_bicubic_x4.png'})")
    print(f"Metrics table:  {demo_dir / 'metrics.md'}   Run folder: {run_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
