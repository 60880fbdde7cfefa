"""The paper's ablation tables from a sweep folder: `python -m dgggan_pl.report <sweep_dir> [--baseline RUN]`.

Table 1 (PI per benchmark with and without the gradient branch) and Table 2 (PI and GFLOPs with and
without SE), from the test metrics each job recorded in its `run_info.json` for its selected (or, with
`--checkpoint last`, its last) checkpoint. NIQE and PSNR tables sit beside PI so that the report still says
something where PI is unavailable. Jobs are grouped by their overrides (seeds of one configuration are
averaged, different configurations get their own rows); failed, interrupted, unfinished, never-started and
absent rows are marked and explained. `--strict` exits non-zero when a table row has no completed job.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate

from dgggan_pl.complexity import DEFAULT_LR_SIZE, build_generator_from_config, count_gflops, count_parameters
from dgggan_pl.launch.devices import override_key
from dgggan_pl.launch.summary import COMPLETED, FAILED, INTERRUPTED, NOT_STARTED
from dgggan_pl.metrics.keys import benchmark_key
from dgggan_pl.metrics.registry import REPORT, spec, table_columns
from dgggan_pl.sweep_results import (
    CHECKPOINT_ROLES,
    FULL_MODEL,
    INCOMPLETE,
    RECORDED,
    RUN_INFO_FILE,
    JobResult,
    collect_jobs,
    collect_run,
)
from dgggan_pl.utils.atomic import write_text_atomic

PAPER_SETS = ("Set5", "Set14", "BSD100", "Urban100")  # column order of the paper's tables
# (row label, ablation name): the paper marks "without" with x and "with" with a check mark.
TABLE1_ROWS = (("×", "no_grad"), ("√", FULL_MODEL))  # Table 1: gradient branch
TABLE2_ROWS = (("×", "no_se"), ("√", FULL_MODEL))  # Table 2: SE block
DEFAULT_TABLE2_SET = "Set5"  # the paper's Table 2 PI (3.2559) is its Table 1 Set5 value (else the first set)
MISSING = "missing"
# A row without a completed job shows the first of these statuses among its jobs.
STATUS_ORDER = (COMPLETED, FAILED, INTERRUPTED, INCOMPLETE, NOT_STARTED)
COMPOSED_MARK = "*"
UNAVAILABLE = (
    "no completed job has a test `{metric}`: the metrics suite reported it unavailable (the reason is in each "
    "job's train.log; docs/metrics.md says what each metric needs){built_from}"
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
    composed: bool = False  # computed from the configuration a missing row would have, not from a job's


@dataclass(frozen=True)
class Row:
    """One table row: an ablation of one configuration (`variant`) and the jobs that ran it."""

    mark: str
    ablation: str
    variant: str
    jobs: tuple[JobResult, ...]
    distinct: str = ""  # the part of `variant` that differs from the other rows' (labels)

    def label(self, show_variant: bool) -> str:
        extra = f"; `{self.distinct or 'defaults'}`" if show_variant else ""
        return f"{self.mark} (`ablation={self.ablation}`{extra})"

    @property
    def status(self) -> str:
        statuses = {job.status for job in self.jobs}
        return next((s for s in STATUS_ORDER if s in statuses), MISSING)


def report_metrics() -> list[tuple[str, str, int]]:
    """(key, title, decimals) of the metrics placed in the report (metrics/registry.py): PI first, the paper's
    metric, as the paper prints it (4 decimals); NIQE and PSNR beside it."""
    return [(s.key, f"{s.label} {s.unit}".strip(), digits) for s, digits in table_columns(REPORT)]


def _built_from(metric: str) -> str:
    """`; PI is computed from NIQE and Ma` for a derived metric (metrics/registry.py `needs`), else nothing."""
    derived = spec(metric)
    parts = [part.label for key in (derived.needs if derived else ()) if (part := spec(key)) is not None]
    return f"; {derived.label} is computed from {' and '.join(parts)}" if derived and parts else ""


def metric_key(set_name: str, metric: str) -> str:
    """The key training logs a final test metric under (`test/<Set>/<metric>`)."""
    return benchmark_key("test", set_name, metric)


def discover_sets(jobs: Sequence[JobResult]) -> list[str]:
    """Benchmark sets present in any job's test metrics, paper order first; the paper's four if none."""
    found = {
        key.split("/")[1]
        for job in jobs
        for test in job.checkpoints.values()
        for key in test.metrics
        if key.count("/") == 2 and key.startswith("test/")
    }
    if not found:
        return list(PAPER_SETS)
    return [s for s in PAPER_SETS if s in found] + sorted(found - set(PAPER_SETS))


def build_rows(jobs: Sequence[JobResult], table_rows: Sequence[tuple[str, str]]) -> list[Row]:
    """The rows of one table: every configuration (variant) present, each with the table's ablations."""
    variants = sorted({job.variant for job in jobs})
    common = set.intersection(*(set(v.split()) for v in variants)) if variants else set()
    return [
        Row(
            mark,
            ablation,
            variant,
            tuple(j for j in jobs if j.variant == variant and j.ablation == ablation),
            " ".join(o for o in variant.split() if o not in common),
        )
        for variant in variants
        for mark, ablation in table_rows
    ]


def _others(jobs: Sequence[JobResult]) -> str:
    """`(+1 failed, +1 interrupted)` for the jobs of a row that did not complete."""
    counts = Counter(job.status for job in jobs if job.status != COMPLETED)
    return "".join(f" (+{n} {status})" for status, n in sorted(counts.items()))


def metric_cell(row: Row, key: str, decimals: int, role: str) -> Cell:
    """Mean of `key` over the row's completed jobs' `role` checkpoint (n shown when > 1), or why there is none.

    A row some of whose jobs did not complete says so in the cell, so a mean over fewer seeds is never mistaken.
    """
    if row.status != COMPLETED:
        return Cell(None, row.status)
    tests = [job.checkpoint(role) for job in row.jobs if job.status == COMPLETED]
    values = [test.metrics[key] for test in tests if test is not None and key in test.metrics]
    if not values:
        return Cell(None, "n/a")
    mean = sum(values) / len(values)
    text = f"{mean:.{decimals}f}" + (f" (n={len(values)})" if len(values) > 1 else "")
    return Cell(mean, text + _others(row.jobs))


def checkpoint_text(row: Row, role: str) -> str:
    """Which checkpoint the row's values come from: `selected @<iteration> (<monitor>)`, `last @<iteration>`."""
    tests = [
        (job, test)
        for job in row.jobs
        if job.status == COMPLETED and (test := job.checkpoint(role)) is not None
    ]
    if not tests:
        return "-"
    roles = sorted({test.role for _, test in tests})
    iterations = ", ".join(str(test.iteration) for _, test in tests if test.iteration is not None)
    monitors = sorted(
        {str(job.selection.get("monitor") or job.selection.get("rule")) for job, _ in tests if job.selection}
    )
    text = "/".join(roles) + (f" @{iterations}" if iterations else "")
    if "selected" in roles and monitors:
        text += f" ({', '.join(monitors)})"
    return text


def _generator_cost(generator_cfg: object) -> tuple[int, float]:
    with torch.device("meta"):
        generator = instantiate(generator_cfg)
    return count_parameters(generator), count_gflops(generator, DEFAULT_LR_SIZE)


def _with_ablation(overrides: Sequence[str], ablation: str) -> list[str]:
    """`overrides` with the ablation group set to `ablation` (keeping the override's `+` if it had one)."""
    kept = [o for o in overrides if override_key(o) != "ablation"]
    prefix = next((o.split("ablation", 1)[0] for o in overrides if override_key(o) == "ablation"), "")
    return [*kept, f"{prefix.replace('~', '')}ablation={ablation}"]


def row_complexity(row: Row, variant_jobs: Sequence[JobResult]) -> Complexity | None:
    """Params and GFLOPs (at `complexity.DEFAULT_LR_SIZE`, on `meta`) of the row's generator: from one of
    its jobs' saved config, else composed from a job of the same configuration with the row's ablation."""
    for job in row.jobs:
        cfg = job.config()
        if cfg is not None and "model" in cfg:
            return Complexity(*_generator_cost(cfg.model.generator))
    for job in variant_jobs:
        try:
            with torch.device("meta"):
                generator = build_generator_from_config(_with_ablation(job.overrides, row.ablation))
        except Exception:  # a configuration this checkout cannot compose: no figure rather than a wrong one
            continue
        return Complexity(
            count_parameters(generator), count_gflops(generator, DEFAULT_LR_SIZE), composed=True
        )
    return None


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _csv_value(cell: Cell) -> str:
    return "" if cell.value is None else f"{cell.value:.6g}"


def table1(rows: Sequence[Row], sets: Sequence[str], role: str) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of Table 1, one block per metric (PI, NIQE, PSNR)."""
    show_variant = len({row.variant for row in rows}) > 1
    header_csv = ["gradient_branch", "ablation", "variant", "status", "checkpoint", "metric", *sets]
    lines, csv_rows = [], [header_csv]
    for metric, title, decimals in report_metrics():
        md_rows = []
        for row in rows:
            cells = [metric_cell(row, metric_key(s, metric), decimals, role) for s in sets]
            source = checkpoint_text(row, role)
            md_rows.append([row.label(show_variant), *[c.text for c in cells], source])
            csv_rows.append(
                [row.mark, row.ablation, row.variant, row.status, source, metric, *map(_csv_value, cells)]
            )
        lines += [f"### Table 1. Gradient branch validity verification ({title})", ""]
        lines += _md_table(["Gradient branch", *sets, "Checkpoint"], md_rows) + [""]
    return lines, csv_rows


def table2(
    rows: Sequence[Row], set_name: str, complexity: Sequence[Complexity | None], role: str
) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of Table 2: PI (and NIQE, PSNR) on `set_name`, params and GFLOPs."""
    show_variant = len({row.variant for row in rows}) > 1
    metrics = report_metrics()
    titles = [title for _, title, _ in metrics]
    header = [
        "SE block",
        *titles,
        "Params",
        f"GFLOPs ({DEFAULT_LR_SIZE[0]}x{DEFAULT_LR_SIZE[1]} LR)",
        "Checkpoint",
    ]
    md_rows = []
    csv_rows = [
        [
            "se_block",
            "ablation",
            "variant",
            "status",
            "checkpoint",
            "set",
            *[m for m, _, _ in metrics],
            "params",
            "gflops",
        ]
    ]
    for row, cost in zip(rows, complexity, strict=True):
        cells = [
            metric_cell(row, metric_key(set_name, metric), decimals, role) for metric, _, decimals in metrics
        ]
        mark = COMPOSED_MARK if cost is not None and cost.composed else ""
        cost_text = [f"{cost.params:,}{mark}", f"{cost.gflops:.3f}{mark}"] if cost else ["n/a", "n/a"]
        source = checkpoint_text(row, role)
        md_rows.append([row.label(show_variant), *[c.text for c in cells], *cost_text, source])
        cost_csv = [str(cost.params), f"{cost.gflops:.9g}"] if cost else ["", ""]
        csv_rows.append(
            [
                row.mark,
                row.ablation,
                row.variant,
                row.status,
                source,
                set_name,
                *map(_csv_value, cells),
                *cost_csv,
            ]
        )
    lines = [f"### Table 2. Results of validation of the SE block ({set_name})", ""]
    return lines + _md_table(header, md_rows) + [""], csv_rows


def _one_line(text: str | None) -> str:
    """An error message fit for one Markdown line (tracebacks and repr()s span several)."""
    return " ".join((text or "no error recorded").split())


def notes(
    jobs: Sequence[JobResult],
    rows: Sequence[Row],
    sets: Sequence[str],
    complexity: Sequence[Complexity | None],
    role: str,
) -> list[str]:
    """Why cells are empty: missing rows, jobs that did not complete, unavailable metrics, composed costs."""
    lines = []
    show_variant = len({row.variant for row in rows}) > 1
    unique = {(row.variant, row.ablation): row for row in rows}  # the full model's row is in both tables
    for row in unique.values():
        if row.status == MISSING:
            lines.append(
                f"- **missing**: no job with `ablation={row.ablation}`"
                + (f" and overrides `{row.variant or 'defaults'}`" if show_variant else "")
                + " (run it, e.g. as a separate run passed with `--baseline <run dir>`)."
            )
    for job in jobs:
        if job.status != COMPLETED:
            lines.append(
                f"- **{job.status}**: job {job.name} (`ablation={job.ablation}`): {_one_line(job.error)}"
            )
        elif role not in job.checkpoints and RECORDED not in job.checkpoints:
            lines.append(f"- **n/a**: job {job.name} recorded no test of its `{role}` checkpoint.")
    completed = [job for job in jobs if job.status == COMPLETED]
    for metric, title, _ in report_metrics():
        keys = {metric_key(s, metric) for s in sets}
        if completed and not any(keys & set(t.metrics) for j in completed for t in j.checkpoints.values()):
            reasons = {j.unavailable[metric] for j in completed if metric in j.unavailable}
            reason = "; ".join(sorted(reasons)) or UNAVAILABLE.format(
                metric=metric, built_from=_built_from(metric)
            )
            lines.append(f"- **{title} unavailable** (n/a): {reason}.")
    if any(cost is not None and cost.composed for cost in complexity):
        lines.append(
            f"- {COMPOSED_MARK} Params/GFLOPs of a row without a job: its generator composed from the configuration "
            "of a job of the same overrides with that row's ablation (this checkout's conf/)."
        )
    return lines


def jobs_table(jobs: Sequence[JobResult], role: str) -> tuple[list[str], list[list[str]]]:
    header = [
        "job",
        "source",
        "ablation",
        "overrides",
        "seed",
        "git_rev",
        "status",
        "checkpoint",
        "output_dir",
        "error",
    ]
    rows = []
    for job in jobs:
        test = job.checkpoint(role)
        source = (
            f"{test.role} @{test.iteration}"
            if test is not None and test.iteration is not None
            else (test.role if test else "")
        )
        rows.append(
            [
                job.name,
                job.source,
                job.ablation,
                job.variant,
                str(job.seed),
                str(job.git_rev),
                job.status,
                source,
                str(job.output_dir or ""),
                job.error or "",
            ]
        )
    md_rows = [
        [
            r[0],
            r[1],
            r[2],
            f"`{r[3]}`" if r[3] else "",
            r[4],
            (r[5] or "")[:12],
            r[6],
            r[7],
            f"`{r[8]}`" if r[8] else "-",
            (_one_line(r[9]) if r[9] else "").replace("|", "\\|"),
        ]
        for r in rows
    ]
    return ["### Jobs", "", *_md_table(header, md_rows), ""], [header, *rows]


@dataclass(frozen=True)
class Report:
    markdown: str
    tables: dict[str, list[list[str]]]
    unfilled: list[str]  # rows of Tables 1 and 2 without a completed job ("<label>: <status>")


def build_report(
    sweep_dir: Path | None,
    table2_set: str | None = None,
    baselines: Sequence[Path] = (),
    checkpoint: str = "selected",
) -> Report:
    """The report of the sweep in `sweep_dir` plus separate run folders `baselines` (e.g. the full model).

    `table2_set` defaults to Set5 (the paper's choice) or, when the jobs were not tested on Set5, the first set;
    `checkpoint` picks whose test metrics fill the tables (`selected` or `last`).
    """
    if checkpoint not in CHECKPOINT_ROLES:
        raise ValueError(f"--checkpoint {checkpoint}: choose one of {', '.join(CHECKPOINT_ROLES)}")
    if sweep_dir is not None and (sweep_dir / RUN_INFO_FILE).is_file():
        raise FileNotFoundError(
            f"{sweep_dir} is a single run folder, not a sweep: report it with --baseline {sweep_dir}"
        )
    jobs = collect_jobs(sweep_dir) if sweep_dir is not None else []
    jobs += [collect_run(path) for path in baselines]
    if not jobs:
        raise FileNotFoundError("nothing to report: give a sweep folder and/or --baseline run folders")
    sets = discover_sets(jobs)
    table2_set = table2_set or (DEFAULT_TABLE2_SET if DEFAULT_TABLE2_SET in sets else sets[0])
    rows1, rows2 = build_rows(jobs, TABLE1_ROWS), build_rows(jobs, TABLE2_ROWS)
    complexity = [row_complexity(row, [j for j in jobs if j.variant == row.variant]) for row in rows2]
    md1, csv1 = table1(rows1, sets, checkpoint)
    md2, csv2 = table2(rows2, table2_set, complexity, checkpoint)
    md_jobs, csv_jobs = jobs_table(jobs, checkpoint)
    note_lines = notes(jobs, [*rows1, *rows2], sets, complexity, checkpoint)
    title = f"`{sweep_dir}`" if sweep_dir is not None else "separate runs"
    baseline_text = "".join(f", baseline `{p}`" for p in baselines)
    lines = [
        f"# Ablation report: {title}{baseline_text}",
        "",
        f"Test metrics of each job's `{checkpoint}` checkpoint.",
        "",
    ]
    lines += [*md1, *md2] + (["### Notes", "", *note_lines, ""] if note_lines else []) + md_jobs
    show_variant = len({row.variant for row in rows1}) > 1
    unfilled = sorted(
        {f"{row.label(show_variant)}: {row.status}" for row in [*rows1, *rows2] if row.status != COMPLETED}
    )
    return Report("\n".join(lines), {"table1.csv": csv1, "table2.csv": csv2, "jobs.csv": csv_jobs}, unfilled)


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dgggan_pl.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, nargs="?", help="a sweep folder of `python -m dgggan_pl.train -m ...`"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a separate run folder to include (e.g. the full model, ablation=none); repeatable",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument(
        "--table2-set",
        default=None,
        help=f"benchmark of Table 2's metrics (default {DEFAULT_TABLE2_SET} if tested)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINT_ROLES,
        default="selected",
        help="whose test metrics fill the tables: the selected checkpoint (default) or last.ckpt",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a row of Table 1 or 2 has no completed job"
    )
    args = parser.parse_args(argv)
    if args.sweep_dir is None and not args.baseline:
        parser.error("give a sweep folder and/or --baseline RUN_DIR")
    try:
        report = build_report(args.sweep_dir, args.table2_set, args.baseline, args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    out = args.out or (args.sweep_dir or args.baseline[0]) / "report"
    write_text_atomic(out / "report.md", report.markdown + "\n")
    for name, rows in report.tables.items():
        write_text_atomic(out / name, _csv_text(rows))
    sys.stdout.write(report.markdown + f"\nWritten: {out}/report.md, " + ", ".join(report.tables) + "\n")
    if args.strict and report.unfilled:
        parser.exit(1, "error: --strict: rows without a completed job: " + "; ".join(report.unfilled) + "\n")


if __name__ == "__main__":
    main()
