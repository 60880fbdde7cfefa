"""The paper's ablation tables from a sweep folder: `python -m dgggan_pl.report <sweep_dir>`.

Table 1 (PI per benchmark with and without the gradient branch) and Table 2 (PI and GFLOPs with and
without SE), from the final test metrics in each job's `run_info.json`. NIQE and PSNR tables sit beside
PI so that the report still says something where PI is unavailable. Jobs that failed, never finished or
are absent from the sweep are marked in the tables and listed with their error.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate

from dgggan_pl.complexity import DEFAULT_LR_SIZE, count_gflops, count_parameters
from dgggan_pl.sweep_results import JobResult, collect_jobs
from dgggan_pl.utils.atomic import write_text_atomic

PAPER_SETS = ("Set5", "Set14", "BSD100", "Urban100")  # column order of the paper's tables
# (row label, ablation name): the paper marks "without" with x and "with" with a check mark.
TABLE1_ROWS = (("×", "no_grad"), ("√", "none"))  # Table 1: gradient branch
TABLE2_ROWS = (("×", "no_se"), ("√", "none"))  # Table 2: SE block
# (key, title, decimals): PI first, the paper's metric, printed as the paper prints it (4 decimals).
METRICS = (("pi", "PI", 4), ("niqe", "NIQE", 4), ("psnr", "PSNR dB", 2))
DEFAULT_TABLE2_SET = "Set5"  # the paper's Table 2 PI (3.2559) is its Table 1 Set5 value (else the first set)
UNAVAILABLE = (
    "no completed job has a test `{metric}`: the metrics suite reported it unavailable (the reason is in each "
    "job's train.log; PI needs NIQE's pristine model and the optional Ma/NRQM backend, see docs/metrics.md)"
)


@dataclass(frozen=True)
class Cell:
    """A table cell: a value, or a marker (failed, missing, n/a, ...) explained in the notes."""

    value: float | None
    text: str


@dataclass(frozen=True)
class Complexity:
    params: int
    gflops: float


def metric_key(set_name: str, metric: str) -> str:
    """The key training logs a final test metric under (`test/<Set>/<metric>`)."""
    return f"test/{set_name}/{metric}"


def discover_sets(jobs: Sequence[JobResult]) -> list[str]:
    """Benchmark sets present in any job's test metrics, paper order first; the paper's four if none."""
    found = {key.split("/")[1] for job in jobs for key in job.metrics if key.count("/") == 2}
    if not found:
        return list(PAPER_SETS)
    return [s for s in PAPER_SETS if s in found] + sorted(found - set(PAPER_SETS))


def row_status(jobs: Sequence[JobResult]) -> str:
    """completed when any job of the row completed; else failed, incomplete or missing."""
    statuses = {job.status for job in jobs}
    for status in ("completed", "failed", "incomplete"):
        if status in statuses:
            return status
    return "missing"


def metric_cell(jobs: Sequence[JobResult], key: str, decimals: int) -> Cell:
    """Mean of `key` over the row's completed jobs (n shown when > 1), or the reason there is none.

    A row whose other jobs failed says so in the cell, so a mean over fewer seeds is never mistaken.
    """
    status = row_status(jobs)
    if status != "completed":
        return Cell(None, status)
    values = [job.metrics[key] for job in jobs if job.status == "completed" and key in job.metrics]
    if not values:
        return Cell(None, "n/a")
    mean = sum(values) / len(values)
    text = f"{mean:.{decimals}f}" + (f" (n={len(values)})" if len(values) > 1 else "")
    failed = sum(job.status != "completed" for job in jobs)
    return Cell(mean, text + (f" (+{failed} failed)" if failed else ""))


def generator_complexity(job: JobResult) -> Complexity | None:
    """Params and GFLOPs (at `complexity.DEFAULT_LR_SIZE`) of the job's own generator config, on `meta`."""
    cfg = job.config()
    if cfg is None or "model" not in cfg:
        return None
    with torch.device("meta"):
        generator = instantiate(cfg.model.generator)
    return Complexity(count_parameters(generator), count_gflops(generator, DEFAULT_LR_SIZE))


def _jobs_of(jobs: Sequence[JobResult], ablation: str) -> list[JobResult]:
    return [job for job in jobs if job.ablation == ablation]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def table1(jobs: Sequence[JobResult], sets: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of Table 1, one block per metric (PI, NIQE, PSNR)."""
    lines, csv_rows = [], [["gradient_branch", "ablation", "status", "metric", *sets]]
    for metric, title, decimals in METRICS:
        rows = []
        for label, ablation in TABLE1_ROWS:
            cells = [metric_cell(_jobs_of(jobs, ablation), metric_key(s, metric), decimals) for s in sets]
            rows.append([f"{label} (`ablation={ablation}`)", *[c.text for c in cells]])
            status = row_status(_jobs_of(jobs, ablation))
            csv_rows.append([label, ablation, status, metric, *[_csv_value(c) for c in cells]])
        lines += [f"### Table 1. Gradient branch validity verification ({title})", ""]
        lines += _md_table(["Gradient branch", *sets], rows) + [""]
    return lines, csv_rows


def table2(
    jobs: Sequence[JobResult], set_name: str, complexity: dict[str, Complexity | None]
) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of Table 2: PI (and NIQE, PSNR) on `set_name`, params and GFLOPs."""
    titles = [title for _, title, _ in METRICS]
    header = ["SE block", *titles, "Params", f"GFLOPs ({DEFAULT_LR_SIZE[0]}x{DEFAULT_LR_SIZE[1]} LR)"]
    md_rows, csv_rows = (
        [],
        [["se_block", "ablation", "status", "set", *[m for m, _, _ in METRICS], "params", "gflops"]],
    )
    for label, ablation in TABLE2_ROWS:
        row_jobs = _jobs_of(jobs, ablation)
        cells = [
            metric_cell(row_jobs, metric_key(set_name, metric), decimals) for metric, _, decimals in METRICS
        ]
        cost = complexity.get(ablation)
        cost_text = [f"{cost.params:,}", f"{cost.gflops:.3f}"] if cost else ["n/a", "n/a"]
        md_rows.append([f"{label} (`ablation={ablation}`)", *[c.text for c in cells], *cost_text])
        cost_csv = [str(cost.params), f"{cost.gflops:.9g}"] if cost else ["", ""]
        csv_rows.append(
            [label, ablation, row_status(row_jobs), set_name, *[_csv_value(c) for c in cells], *cost_csv]
        )
    lines = [f"### Table 2. Results of validation of the SE block ({set_name})", ""]
    return lines + _md_table(header, md_rows) + [""], csv_rows


def _one_line(text: str | None) -> str:
    """An error message fit for one Markdown line (tracebacks and repr()s span several)."""
    return " ".join((text or "no error recorded").split())


def _csv_value(cell: Cell) -> str:
    return "" if cell.value is None else f"{cell.value:.6g}"


def notes(jobs: Sequence[JobResult], sets: Sequence[str]) -> list[str]:
    """Why cells are empty: missing ablations, failed jobs, unavailable metrics."""
    lines = []
    for ablation in sorted({a for _, a in (*TABLE1_ROWS, *TABLE2_ROWS)}):
        if not _jobs_of(jobs, ablation):
            lines.append(f"- **missing**: no job with `ablation={ablation}` in this sweep.")
    for job in jobs:
        if job.status != "completed":
            lines.append(
                f"- **{job.status}**: job {job.name} (`ablation={job.ablation}`): {_one_line(job.error)}"
            )
    completed = [job for job in jobs if job.status == "completed"]
    for metric, title, _ in METRICS:
        if completed and not any(metric_key(s, metric) in j.metrics for j in completed for s in sets):
            reasons = {j.unavailable[metric] for j in completed if metric in j.unavailable}
            reason = "; ".join(sorted(reasons)) or UNAVAILABLE.format(metric=metric)
            lines.append(f"- **{title} unavailable** (n/a): {reason}.")
    return lines


def jobs_table(jobs: Sequence[JobResult]) -> tuple[list[str], list[list[str]]]:
    header = ["job", "ablation", "seed", "git_rev", "status", "output_dir", "error"]
    rows = [
        [
            job.name,
            job.ablation,
            str(job.seed),
            str(job.git_rev),
            job.status,
            str(job.output_dir),
            job.error or "",
        ]
        for job in jobs
    ]
    md_rows = [
        [
            r[0],
            r[1],
            r[2],
            (r[3] or "")[:12],
            r[4],
            f"`{r[5]}`",
            (_one_line(r[6]) if r[6] else "").replace("|", "\\|"),
        ]
        for r in rows
    ]
    return ["### Jobs", "", *_md_table(header, md_rows), ""], [header, *rows]


def build_report(sweep_dir: Path, table2_set: str | None = None) -> tuple[str, dict[str, list[list[str]]]]:
    """(Markdown, {csv file name: rows}) for the sweep in `sweep_dir`.

    `table2_set` defaults to Set5 (the paper's choice) or, when the jobs were not tested on Set5, the first set.
    """
    jobs = collect_jobs(sweep_dir)
    sets = discover_sets(jobs)
    table2_set = table2_set or (DEFAULT_TABLE2_SET if DEFAULT_TABLE2_SET in sets else sets[0])
    complexity = {}
    for _, ablation in TABLE2_ROWS:
        configured = [job for job in _jobs_of(jobs, ablation) if job.config() is not None]
        complexity[ablation] = generator_complexity(configured[0]) if configured else None
    md1, csv1 = table1(jobs, sets)
    md2, csv2 = table2(jobs, table2_set, complexity)
    md_jobs, csv_jobs = jobs_table(jobs)
    note_lines = notes(jobs, sets)
    lines = [f"# Ablation report: `{sweep_dir}`", "", *md1, *md2]
    lines += (["### Notes", "", *note_lines, ""] if note_lines else []) + md_jobs
    return "\n".join(lines), {"table1.csv": csv1, "table2.csv": csv2, "jobs.csv": csv_jobs}


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dgggan_pl.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder of `python -m dgggan_pl.train -m ...`")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument(
        "--table2-set",
        default=None,
        help=f"benchmark of Table 2's metrics (default {DEFAULT_TABLE2_SET} if tested)",
    )
    args = parser.parse_args(argv)
    try:
        markdown, tables = build_report(args.sweep_dir, args.table2_set)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    out = args.out or args.sweep_dir / "report"
    write_text_atomic(out / "report.md", markdown + "\n")
    for name, rows in tables.items():
        write_text_atomic(out / name, _csv_text(rows))
    sys.stdout.write(markdown + f"\nWritten: {out}/report.md, " + ", ".join(tables) + "\n")


if __name__ == "__main__":
    main()
