"""report.py on synthetic sweep folders: table layout, markers for failed/missing jobs, CSV, GFLOPs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.launch.summary import JobRecord, write_summary
from dgggan_pl.report import build_report, main

TINY = [
    "model.generator.channels=8",
    "model.generator.se_reduction=2",
    "model.generator.num_blocks=3",
    "model.generator.injection_blocks=[1,2,3]",
]


def _metrics(pi: float | None, niqe: float, psnr: float) -> dict[str, float]:
    metrics = {}
    for offset, name in enumerate(("Set5", "Set14")):
        metrics[f"test/{name}/niqe"] = niqe + offset
        metrics[f"test/{name}/psnr"] = psnr - offset
        if pi is not None:
            metrics[f"test/{name}/pi"] = pi + offset
    return metrics


def _job(
    sweep: Path,
    num: int,
    ablation: str,
    status: str,
    compose: Callable[..., DictConfig],
    metrics: dict[str, float] | None = None,
    error: str | None = None,
) -> JobRecord:
    """A job folder as train would leave it: `.hydra/config.yaml` and `run_info.json`."""
    folder = sweep / f"{num}_ablation={ablation}"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose([f"ablation={ablation}", *TINY]), folder / ".hydra" / "config.yaml")
    info = {
        "status": status,
        "ablation": ablation,
        "seed": 7,
        "git_rev": "abc123",
        "config_sha256": "0" * 64,
        "started": "2026-01-01T00:00:00",
        "finished": "2026-01-01T00:01:00",
        "error": error,
        "metrics": metrics or {},
    }
    (folder / "run_info.json").write_text(json.dumps(info))
    launcher_status = "completed" if status == "completed" else "failed"
    return JobRecord(
        num=num, overrides=[f"ablation={ablation}"], output_dir=str(folder), status=launcher_status
    )


@pytest.fixture
def sweep(tmp_path: Path, compose: Callable[..., DictConfig]) -> Path:
    """none and no_grad completed (no PI), no_se failed in training, a 4th job died before run_info."""
    sweep = tmp_path / "sweep"
    records = [
        _job(sweep, 0, "none", "completed", compose, _metrics(None, 5.0, 25.0)),
        _job(sweep, 1, "no_grad", "completed", compose, _metrics(None, 6.0, 24.0)),
        _job(sweep, 2, "no_se", "failed", compose, error="RuntimeError: boom"),
        JobRecord(3, ["ablation=none", "seed=1"], str(sweep / "3_x"), status="failed", error="exit code 1"),
    ]
    write_summary(sweep, "ddp", records)
    return sweep


def test_tables_mark_failed_and_unavailable(sweep: Path) -> None:
    markdown, tables = build_report(sweep)
    assert "Table 1. Gradient branch validity verification (PI)" in markdown
    assert "Table 2. Results of validation of the SE block (Set5)" in markdown
    pi_rows = [r for r in tables["table1.csv"] if r[3] == "pi"]
    assert [r[:3] for r in pi_rows] == [["×", "no_grad", "completed"], ["√", "none", "completed"]]
    assert all(value == "" for row in pi_rows for value in row[4:])  # PI never invented
    niqe = {r[1]: r[4:] for r in tables["table1.csv"] if r[3] == "niqe"}
    assert tables["table1.csv"][0][4:] == ["Set5", "Set14"]
    assert niqe == {"no_grad": ["6", "7"], "none": ["5", "6"]}
    assert "PI unavailable" in markdown and "RuntimeError: boom" in markdown and "exit code 1" in markdown
    assert "| √ (`ablation=none`) | n/a | 5.0000 (+1 failed) | 25.00 (+1 failed) |" in markdown
    table2 = {r[1]: r for r in tables["table2.csv"][1:]}
    assert table2["no_se"][2] == "failed" and table2["no_se"][4:7] == ["", "", ""]
    assert "| × (`ablation=no_se`) | failed | failed | failed |" in markdown


def test_table2_gflops_from_job_configs(sweep: Path) -> None:
    _, tables = build_report(sweep)
    table2 = {r[1]: r for r in tables["table2.csv"][1:]}
    with_se, without_se = int(table2["none"][7]), int(table2["no_se"][7])
    assert with_se > without_se > 0  # SE adds parameters; counted from the failed job's config too
    assert float(table2["none"][8]) > float(table2["no_se"][8]) > 0


def test_missing_ablation_and_mean_over_seeds(tmp_path: Path, compose: Callable[..., DictConfig]) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_grad", "completed", compose, _metrics(3.0, 5.0, 25.0))
    _job(sweep, 1, "no_grad", "completed", compose, _metrics(4.0, 5.0, 25.0))
    markdown, tables = build_report(sweep)
    pi = {r[1]: r for r in tables["table1.csv"] if r[3] == "pi"}
    assert pi["no_grad"][4] == "3.5" and pi["none"][2] == "missing"
    assert (
        "3.5000 (n=2)" in markdown and "25.00 (n=2)" in markdown and "no job with `ablation=none`" in markdown
    )


def test_table2_uses_the_first_set_when_set5_was_not_tested(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_se", "completed", compose, {"test/Sample/psnr": 20.0, "test/Zeta/psnr": 1.0})
    markdown, tables = build_report(sweep)
    assert "SE block (Sample)" in markdown
    assert tables["table2.csv"][1][:7] == ["×", "no_se", "completed", "Sample", "", "", "20"]


def test_multiline_errors_stay_on_one_markdown_line(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_se", "failed", compose, error="Boom:\nValueError('x | y')")
    markdown, _ = build_report(sweep)
    assert "Boom: ValueError('x \\| y')" in markdown and "Boom:\n" not in markdown


def test_cli_writes_markdown_and_csv(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main([str(sweep), "--out", str(out)])
    assert (out / "report.md").read_text().startswith("# Ablation report")
    with (out / "table2.csv").open() as handle:
        assert next(csv.reader(handle))[:3] == ["se_block", "ablation", "status"]


def test_cli_names_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
