"""A metric is one `register(MetricSpec(...))`: a toy metric registered here, and nowhere else, reaches the training
logs, the W&B summaries (best = its `better`), evaluate's tables, the figures and comparison page, and the report."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf, open_dict

from dgggan_pl.callbacks.metric_history import MetricHistory
from dgggan_pl.callbacks.wandb_metrics import WandbMetrics
from dgggan_pl.config import ConfigError, compose_config, config_dir
from dgggan_pl.config_checks import check_config
from dgggan_pl.figures import make_figures, metric_lines
from dgggan_pl.metrics.per_image import PerImageMetric
from dgggan_pl.metrics.perceptual import LPIPS_RANDOM_KEY
from dgggan_pl.metrics.registry import REPORT, TABLE3, TABLE4, MetricSpec, Placement, register, unregister
from dgggan_pl.metrics.tables import table_spec
from dgggan_pl.module import DGGGANModule
from dgggan_pl.report import build_report
from test_report import _job

KNOWN = "known metrics: psnr, ssim, lpips, niqe, ma, pi"


class MeanAbsoluteError(PerImageMetric):
    """`scale` x mean |SR - HR| per image: a distance, lower is better."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def score(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.scale * (sr - hr).abs().flatten(1).mean(1)


TOY = MetricSpec(
    "toy_mae",
    "ToyMAE",
    "min",
    5,
    caption="(toy: 2 x mean |SR - HR|)",
    placements=(Placement(TABLE4, 3), Placement(REPORT, 3)),
    # its own config key, passed through untouched: +metrics.benchmark.toy_scale=...
    build=lambda settings: MeanAbsoluteError(float(settings.options.get("toy_scale", 1.0))),
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.key)


class RecordingRun:
    """The part of a W&B run `WandbMetrics.define_metrics` talks to: every definition, by key."""

    def __init__(self) -> None:
        self.defined: dict[str, dict] = {}

    def define_metric(self, name: str, **options) -> None:
        self.defined[name] = options


def test_toy_metric_is_built_from_its_config_logged_and_summarised(toy, tmp_path: Path) -> None:
    overrides = ["experiment=pretrain", "debug=smoke", "metrics.benchmark.metrics=[psnr,toy_mae]"]
    cfg = compose_config([*overrides, "+metrics.benchmark.toy_scale=2.0"])
    suite = instantiate(cfg.metrics.benchmark)()
    sr, hr = torch.full((2, 3, 16, 16), 0.25), torch.full((2, 3, 16, 16), 0.5)
    suite.update(sr, hr, ["a", "b"])
    assert suite.compute()["toy_mae"] == pytest.approx(2.0 * 0.25) and suite.unavailable == {}

    # training logs: one validation of the smoke module on the sample set logs val/Sample/toy_mae
    parts = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim", "metrics")
    }
    module = DGGGANModule(**parts, val_sets=["Sample"])
    datamodule = instantiate(cfg.data)
    history = MetricHistory(str(tmp_path / "history.json"))
    trainer = Trainer(
        accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False, callbacks=[history]
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    assert float(trainer.callback_metrics["val/Sample/toy_mae"]) > 0
    assert "val/Sample/toy_mae" in json.loads((tmp_path / "history.json").read_text())[-1]

    # W&B: the key is defined with its best (min, as registered) and last values in the summary
    run = RecordingRun()
    WandbMetrics().define_metrics(run, {"val": ["Sample"], "test": ["Sample"]})
    assert run.defined["val/Sample/toy_mae"]["summary"] == "min,last"
    assert run.defined["test/Sample/toy_mae"]["summary"] == "min,last"
    assert run.defined["val/Sample/psnr"]["summary"] == "max,last"


def test_toy_metric_in_evaluate_tables_and_the_figures_page(toy, data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [
            f"paths.data_dir={data_dir}",
            "sets=[Set5]",
            "progress=false",
            "models=[bicubic]",
            "metrics.benchmark.metrics=[psnr,toy_mae]",
            "figure6.metrics=[psnr,toy_mae]",
        ],
        config_name="figures",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    make_figures(cfg)  # runs the evaluation (tables) and writes Figure 6 and the page

    table4 = (tmp_path / "table4_pi_lpips.md").read_text()
    assert "Cells: PI / LPIPS / NIQE / ToyMAE." in table4
    assert table4.startswith(f"{table_spec(TABLE4).caption}.\n") and TOY.caption in table4  # its caption too
    row = next(line for line in table4.splitlines() if line.startswith("| Bicubic |"))
    per_image = list(csv.DictReader((tmp_path / "per_image" / "Bicubic" / "Set5.csv").open()))
    mean = sum(float(r["toy_mae"]) for r in per_image) / len(per_image)
    assert row.endswith(f"| n/a / n/a / n/a / {mean:.5f} |")  # its own 5 digits; the rest not requested
    (csv_row,) = csv.DictReader((tmp_path / "table4_pi_lpips.csv").open())
    assert float(csv_row["Set5 ToyMAE"]) == pytest.approx(mean)

    page = (tmp_path / "comparison.html").read_text()
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert data["metric_keys"] == ["psnr", "toy_mae"] and data["metric_digits"]["toy_mae"] == 5
    assert set(data["sets"]["Set5"][0]["methods"]["Bicubic"]["metrics"]) == {"psnr", "toy_mae"}
    assert metric_lines({"toy_mae": 0.123456, "psnr": 28.4321}, ["psnr", "toy_mae"]) == [
        "PSNR 28.43 dB",
        "ToyMAE 0.12346",
    ]


def test_toy_metric_in_the_ablation_report(toy, tmp_path: Path, compose) -> None:
    metrics = {"test/Set5/psnr": 25.0, "test/Set5/toy_mae": 0.0123456}
    _job(tmp_path, 0, "none", "completed", compose, metrics)
    report = build_report(None, baselines=[tmp_path / "0_ablation=none"])
    assert "### Table 1. Gradient branch validity verification (ToyMAE)" in report.markdown
    assert "| 0.01235 |" in report.markdown.split("(ToyMAE)")[1]
    assert report.tables["table2.csv"][0][-3] == "toy_mae"  # metric columns, then params and gflops


def test_table_captions_are_built_from_the_registry(toy) -> None:
    """Each metric's label, unit and caption, shared captions once, which way is better: a new metric is in them."""
    paper = "PI = ((10 - Ma) + NIQE) / 2 (PIRM 2018) / LPIPS (AlexNet v0.1) / NIQE (PIRM convention)"
    assert table_spec(TABLE4).caption == f"{paper} / ToyMAE {TOY.caption}, per-image mean; lower is better"
    random = table_spec(TABLE4, present=[LPIPS_RANDOM_KEY]).caption
    assert "LPIPS(random) (AlexNet with RANDOM weights: tests only)" in random and "v0.1" not in random
    assert table_spec(TABLE3).caption == (
        "PSNR (dB) / SSIM on Y (MATLAB rgb2ycbcr), border = scale, per-image mean; higher is better"
    )
    fidelity_toy = replace(TOY, key="toy_fidelity", label="ToyF", placements=(Placement(TABLE3, 2),))
    register(fidelity_toy)
    try:
        assert table_spec(TABLE3).caption.endswith(
            f"border = scale / ToyF {TOY.caption}, per-image mean; lower is better for ToyF, higher for PSNR, SSIM"
        )
    finally:
        unregister(fidelity_toy.key)


def test_toy_metric_reaches_the_dashboard_panels_and_report(toy, tmp_path: Path) -> None:
    """Registered with placements in Table 4 and the report, and named nowhere in conf/dashboard.yaml: the
    Perception section plots it per validation set, the test bars and the runs table show it, and the W&B
    report's tables have its bars."""
    pytest.importorskip("wandb_workspaces", reason="the optional extra `dashboard` (wandb-workspaces)")
    from dgggan_pl import dashboard

    assert "toy_mae" not in (config_dir() / "dashboard.yaml").read_text()
    args = ["--entity", "e", "--project", "p", "--group", "g", "--dry-run", str(tmp_path)]
    dashboard.main([*args, "val_sets=[Set5]", "test_sets=[Set5,Set14]"])
    workspace = json.loads((tmp_path / dashboard.WORKSPACE_FILE).read_text())
    report = json.loads((tmp_path / dashboard.REPORT_FILE).read_text())
    sections = {s["name"]: s for s in workspace["spec"]["section"]["panelBankConfig"]["sections"]}

    def keys(node) -> list[str]:
        return re.findall(r'"((?:val|test)/[^"]+/toy_mae(?:\.\w+)?)"', json.dumps(node))

    assert keys(sections["Perception"]) == ["val/Set5/toy_mae"] and keys(sections["Fidelity"]) == []
    assert set(keys(sections["Test (selected checkpoint)"])) == {"test/Set5/toy_mae", "test/Set14/toy_mae"}
    columns = json.dumps(workspace["spec"]["section"]["runSets"])
    assert "summary:val/Set5/toy_mae.min" in columns and "summary:test/Set14/toy_mae.last" in columns
    assert {"test/Set5/toy_mae", "test/Set14/toy_mae"} <= set(keys(report))  # Table 1 and Table 2 bars


def test_unknown_metric_is_one_line_naming_the_key_and_the_known_metrics(compose) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(compose(["metrics.benchmark.metrics=[psnr,foo]"]))
    assert str(error.value) == f"metrics.benchmark.metrics: unknown 'foo'; {KNOWN}"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_unknown_metric_cli_prints_one_line(command: str, tmp_path: Path) -> None:
    """Before: train printed a 21-line traceback for this override."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"dgggan_pl.{command}",
            "metrics.benchmark.metrics=[psnr,foo]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: metrics.benchmark.metrics: unknown 'foo'; {KNOWN}"], done.stderr
    assert not (tmp_path / "run" / "run_info.json").exists(), "refused before the run folder is written"


@pytest.mark.slow
def test_toy_metric_in_a_real_offline_wandb_run_and_its_report(toy, tmp_path: Path, monkeypatch) -> None:
    """End to end: train (2 validations, 1 test) logs it, W&B keeps its best (min) and last, report prints it."""
    wandb_file = pytest.importorskip("test_wandb")
    from dgggan_pl.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["experiment=pretrain", "debug=smoke", "logger=wandb", f"paths.output_dir={tmp_path}"]
    metrics = train(compose_config([*overrides, "metrics.benchmark.metrics=[psnr,toy_mae]"]))
    assert {"val/Sample/toy_mae", "test/Sample/toy_mae"} <= set(metrics)

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_file.read_records(run_file)
    _, summary = wandb_file.logged_keys(records)
    values = [
        row["val/Sample/toy_mae"] for row in wandb_file.history_rows(records) if "val/Sample/toy_mae" in row
    ]
    assert len(values) == 2 and summary["val/Sample/toy_mae"] == {"min": min(values), "last": values[-1]}

    selected = json.loads((tmp_path / "run_info.json").read_text())["checkpoints"]["selected"]["metrics"]
    block = build_report(None, baselines=[tmp_path]).markdown.split("(ToyMAE)")[1].split("###")[0]
    assert f"| {selected['test/Sample/toy_mae']:.5f} |" in block
