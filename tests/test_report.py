"""report.py on synthetic sweep folders: table layout, markers for failed/missing jobs, CSV, GFLOPs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
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
    extra: Sequence[str] = (),
    checkpoints: dict | None = None,
    launcher_status: str | None = None,
) -> JobRecord:
    """A job folder as train would leave it: `.hydra/config.yaml`, `.hydra/overrides.yaml`, `run_info.json`."""
    overrides = [f"ablation={ablation}", *TINY, *extra]
    folder = sweep / f"{num}_ablation={ablation}{''.join(extra)}"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose(overrides), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
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
    if checkpoints is not None:
        info["checkpoints"] = checkpoints
    (folder / "run_info.json").write_text(json.dumps(info))
    launcher_status = launcher_status or ("completed" if status == "completed" else "failed")
    return JobRecord(num=num, overrides=overrides, output_dir=str(folder), status=launcher_status)


@pytest.fixture
def sweep(tmp_path: Path, compose: Callable[..., DictConfig]) -> Path:
    """none and no_grad completed (no PI), no_se failed in training, a 4th job died before run_info."""
    sweep = tmp_path / "sweep"
    records = [
        _job(sweep, 0, "none", "completed", compose, _metrics(None, 5.0, 25.0)),
        _job(sweep, 1, "no_grad", "completed", compose, _metrics(None, 6.0, 24.0)),
        _job(sweep, 2, "no_se", "failed", compose, error="RuntimeError: boom"),
        JobRecord(
            3, ["ablation=none", *TINY, "seed=1"], str(sweep / "3_x"), status="failed", error="exit code 1"
        ),
    ]
    write_summary(sweep, "ddp", records)
    return sweep


def test_tables_mark_failed_and_unavailable(sweep: Path) -> None:
    report = build_report(sweep)
    markdown, tables = report.markdown, report.tables
    assert "Table 1. Gradient branch validity verification (PI)" in markdown
    assert "Table 2. Results of validation of the SE block (Set5)" in markdown
    pi_rows = [r for r in tables["table1.csv"] if r[5] == "pi"]
    assert [[r[0], r[1], r[3]] for r in pi_rows] == [
        ["×", "no_grad", "completed"],
        ["√", "none", "completed"],
    ]
    assert all(value == "" for row in pi_rows for value in row[6:])  # PI never invented
    niqe = {r[1]: r[6:] for r in tables["table1.csv"] if r[5] == "niqe"}
    assert tables["table1.csv"][0][6:] == ["Set5", "Set14"]
    assert niqe == {"no_grad": ["6", "7"], "none": ["5", "6"]}
    assert "PI unavailable" in markdown and "RuntimeError: boom" in markdown and "exit code 1" in markdown
    assert "| √ (`ablation=none`) | n/a | 5.0000 (+1 failed) | 25.00 (+1 failed) | " in markdown  # Table 2
    assert "| √ (`ablation=none`) | 5.0000 (+1 failed) | 6.0000 (+1 failed) | recorded |" in markdown  # NIQE
    table2 = {r[1]: r for r in tables["table2.csv"][1:]}
    assert table2["no_se"][3] == "failed" and table2["no_se"][6:9] == ["", "", ""]
    assert "| × (`ablation=no_se`) | failed | failed | failed |" in markdown
    assert report.unfilled == ["× (`ablation=no_se`): failed"]


def test_table2_gflops_from_job_configs(sweep: Path) -> None:
    table2 = {r[1]: r for r in build_report(sweep).tables["table2.csv"][1:]}
    with_se, without_se = int(table2["none"][9]), int(table2["no_se"][9])
    assert with_se > without_se > 0  # SE adds parameters; counted from the failed job's config too
    assert float(table2["none"][10]) > float(table2["no_se"][10]) > 0


def test_missing_ablation_and_mean_over_seeds(tmp_path: Path, compose: Callable[..., DictConfig]) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_grad", "completed", compose, _metrics(3.0, 5.0, 25.0))
    _job(sweep, 1, "no_grad", "completed", compose, _metrics(4.0, 5.0, 25.0))
    report = build_report(sweep)
    markdown, tables = report.markdown, report.tables
    pi = {r[1]: r for r in tables["table1.csv"] if r[5] == "pi"}
    assert pi["no_grad"][6] == "3.5" and pi["none"][3] == "missing"
    assert (
        "3.5000 (n=2)" in markdown and "25.00 (n=2)" in markdown and "no job with `ablation=none`" in markdown
    )


def test_table2_uses_the_first_set_when_set5_was_not_tested(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_se", "completed", compose, {"test/Sample/psnr": 20.0, "test/Zeta/psnr": 1.0})
    report = build_report(sweep)
    assert "SE block (Sample)" in report.markdown
    row = report.tables["table2.csv"][1]
    assert row[:4] == ["×", "no_se", " ".join(sorted(TINY)), "completed"] and row[5:9] == [
        "Sample",
        "",
        "",
        "20",
    ]


def test_multiline_errors_stay_on_one_markdown_line(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "no_se", "failed", compose, error="Boom:\nValueError('x | y')")
    markdown = build_report(sweep).markdown
    assert "Boom: ValueError('x \\| y')" in markdown and "Boom:\n" not in markdown


def test_cli_writes_markdown_and_csv(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main([str(sweep), "--out", str(out)])
    assert (out / "report.md").read_text().startswith("# Ablation report")
    with (out / "table2.csv").open() as handle:
        assert next(csv.reader(handle))[:4] == ["se_block", "ablation", "variant", "status"]


def test_cli_names_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2


def _checkpoints(selected: float, last: float) -> dict:
    """run_info's record of the two tested checkpoints (PSNR on Set5 differs between them)."""
    return {
        "selection": {"monitor": "val/Set14/lpips", "mode": "min", "rule": "best", "chain": []},
        "selected": {
            "path": "checkpoints/best-30.ckpt",
            "iteration": 30,
            "metrics": {"test/Set5/psnr": selected},
        },
        "last": {"path": "checkpoints/last.ckpt", "iteration": 40, "metrics": {"test/Set5/psnr": last}},
    }


def test_rows_show_and_switch_the_checkpoint(tmp_path: Path, compose: Callable[..., DictConfig]) -> None:
    sweep = tmp_path / "sweep"
    records = [
        _job(sweep, 0, "no_grad", "completed", compose, checkpoints=_checkpoints(20.0, 21.0)),
        _job(sweep, 1, "none", "completed", compose, checkpoints=_checkpoints(22.0, 23.0)),
    ]
    write_summary(sweep, "ddp", records)
    selected = build_report(sweep)
    psnr = {r[1]: r for r in selected.tables["table1.csv"] if r[5] == "psnr"}
    assert (psnr["no_grad"][6], psnr["none"][6]) == ("20", "22")
    assert psnr["none"][4] == "selected @30 (val/Set14/lpips)"
    assert "| √ (`ablation=none`) | 22.00 | selected @30 (val/Set14/lpips) |" in selected.markdown
    last = build_report(sweep, checkpoint="last")
    psnr = {r[1]: r for r in last.tables["table1.csv"] if r[5] == "psnr"}
    assert (psnr["no_grad"][6], psnr["none"][6], psnr["none"][4]) == ("21", "23", "last @40")
    assert "`last` checkpoint" in last.markdown


def test_unlike_jobs_are_not_averaged(tmp_path: Path, compose: Callable[..., DictConfig]) -> None:
    """A sweep over two models gives one row per model (never a mean of both); seeds of one model average."""
    sweep = tmp_path / "sweep"
    records = [
        _job(
            sweep,
            0,
            "none",
            "completed",
            compose,
            _metrics(None, 5.0, 30.0),
            extra=["hr_patch_size=64"],
        ),
        _job(
            sweep,
            1,
            "none",
            "completed",
            compose,
            _metrics(None, 5.0, 20.0),
            extra=["hr_patch_size=96"],
        ),
        _job(
            sweep,
            2,
            "none",
            "completed",
            compose,
            _metrics(None, 5.0, 22.0),
            extra=["hr_patch_size=96", "seed=3"],
        ),
    ]
    write_summary(sweep, "ddp", records)
    report = build_report(sweep)
    psnr = {r[2]: r for r in report.tables["table1.csv"] if r[5] == "psnr" and r[1] == "none"}
    assert len(psnr) == 2
    by_width = {("hr_patch_size=64" in v): row[6] for v, row in psnr.items()}
    assert by_width == {True: "30", False: "21"}
    assert (
        "| √ (`ablation=none`; `hr_patch_size=96`) | 21.00 (n=2) | 20.00 (n=2) | recorded |"
        in report.markdown
    )


def test_interrupted_not_started_and_incomplete_are_not_failed(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    sweep = tmp_path / "sweep"
    completed = _job(sweep, 0, "none", "completed", compose, _metrics(None, 5.0, 25.0))
    # Lightning turns Ctrl-C into SystemExit(1), which train records as a failure: the launcher knows better.
    interrupted = _job(
        sweep,
        1,
        "none",
        "failed",
        compose,
        error="SystemExit: 1",
        launcher_status="interrupted",
        extra=["seed=1"],
    )
    interrupted.error = "sweep received SIGINT; exit code -2"
    running = _job(sweep, 2, "none", "running", compose, launcher_status="running", extra=["seed=2"])
    never = JobRecord(3, ["ablation=no_grad", *TINY], str(sweep / "3_ablation=no_grad"), status="not started")
    write_summary(sweep, "ddp", [completed, interrupted, running, never])
    report = build_report(sweep)
    jobs = {r[0]: r for r in report.tables["jobs.csv"][1:]}
    assert [r[6] for r in jobs.values()] == ["completed", "interrupted", "incomplete", "not started"]
    assert "#3" in jobs and jobs["#3"][8] == ""  # no made-up job folder
    assert "25.00 (+1 incomplete) (+1 interrupted)" in report.markdown
    assert "SIGINT" in report.markdown and "failed" not in report.markdown.split("### Jobs")[0]
    assert "× (`ablation=no_grad`): not started" in report.unfilled


def test_baseline_run_fills_the_full_model_rows_and_strict(
    tmp_path: Path, compose: Callable[..., DictConfig]
) -> None:
    """`-m ablation=no_grad,no_se` plus a separate full-model run: both tables filled; --strict passes. Without
    the baseline the full model's rows are missing, --strict fails, and Params/GFLOPs are composed."""
    sweep = tmp_path / "sweep"
    records = [
        _job(sweep, 0, "no_grad", "completed", compose, _metrics(None, 6.0, 24.0)),
        _job(sweep, 1, "no_se", "completed", compose, _metrics(None, 6.5, 24.5)),
    ]
    write_summary(sweep, "ddp", records)
    runs = tmp_path / "runs"
    _job(runs, 0, "none", "completed", compose, _metrics(None, 5.0, 25.0))
    (baseline,) = runs.iterdir()

    alone = build_report(sweep)
    assert sorted(alone.unfilled) == ["√ (`ablation=none`): missing"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--strict"])
    assert exit_info.value.code == 1
    table2 = {r[1]: r for r in alone.tables["table2.csv"][1:]}
    composed = build_report(sweep, baselines=[baseline]).tables["table2.csv"][1:]
    assert table2["none"][9] == next(r[9] for r in composed if r[1] == "none")  # same count as from the job
    assert int(table2["none"][9]) > int(table2["no_se"][9]) > 0
    assert "75," in alone.markdown and "*" in alone.markdown  # composed figures are marked

    full = build_report(sweep, baselines=[baseline])
    assert full.unfilled == []
    psnr = {r[1]: r[6] for r in full.tables["table1.csv"] if r[5] == "psnr"}
    assert psnr == {"no_grad": "24", "none": "25"}
    main([str(sweep), "--baseline", str(baseline), "--strict"])  # exit 0
    assert "baseline" in {r[1] for r in full.tables["jobs.csv"][1:]}
