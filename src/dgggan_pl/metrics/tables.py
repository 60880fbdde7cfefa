"""The paper's result tables as Markdown and CSV: Table 3 (PSNR / SSIM) and Table 4 (PI / LPIPS / NIQE).

One row per method (a checkpoint, the bicubic baseline or a results folder), with the source it comes from
(checkpoint file, iteration, weights), one column group per benchmark set. NIQE sits beside PI and LPIPS
because the paper's PI is built from it. A metric that could not be computed shows as `unavailable` (CSV) /
`n/a` (Markdown) with its reason in a note below the table: never as a number. A table's columns are the
metrics placed in it by their `MetricSpec` (metrics/registry.py), and its caption is built from their captions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dgggan_pl.metrics import registry
from dgggan_pl.metrics.registry import TABLE3, TABLE4
from dgggan_pl.utils.atomic import write_text_atomic

UNAVAILABLE = "unavailable"


@dataclass
class SetResult:
    """The metrics of one method on one benchmark set."""

    values: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)


# method label -> set name -> result
Results = Mapping[str, Mapping[str, SetResult]]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int


@dataclass(frozen=True)
class TableSpec:
    name: str
    caption: str
    columns: tuple[Column, ...]


def caption(metrics: Sequence[registry.MetricSpec]) -> str:
    """A table's caption from its columns' specs: each metric's label and unit, then its `caption` (once for
    neighbours that share it), the per-image mean and which way is better, e.g.
    `PSNR (dB) / SSIM on Y (MATLAB rgb2ycbcr), border = scale, per-image mean; higher is better`."""
    groups: list[tuple[list[str], str]] = []
    for metric in metrics:
        name = metric.label + (f" ({metric.unit})" if metric.unit else "")
        if groups and groups[-1][1] == metric.caption:
            groups[-1][0].append(name)
        else:
            groups.append(([name], metric.caption))
    text = " / ".join(" / ".join(names) + (f" {how}" if how else "") for names, how in groups)
    goals = {goal: [m.label for m in metrics if m.better == goal] for goal in ("min", "max")}
    if not goals["max"]:
        better = "lower is better"
    elif not goals["min"]:
        better = "higher is better"
    else:
        better = f"lower is better for {', '.join(goals['min'])}, higher for {', '.join(goals['max'])}"
    return f"{text}, per-image mean; {better}"


def table_spec(name: str, present: Sequence[str] = ()) -> TableSpec:
    """Table `name` with the metrics placed in it, captioned from their specs; `present` (the computed keys)
    picks a variant's column, so a random-backbone LPIPS gets its own, explicit column name and caption."""
    placed = registry.table_columns(name, present)
    columns = tuple(Column(s.key, s.header or s.label, digits) for s, digits in placed)
    return TableSpec(name, caption([s for s, _ in placed]), columns)


NOT_REQUESTED = "not requested (metrics.benchmark.metrics)"


def _needed_parts(key: str) -> dict[str, str]:
    """What a derived metric is built from, `{key: label}`: their reasons explain its empty cell (PI: Ma, NIQE)."""
    metric = registry.spec(key)
    parts = [registry.spec(k) for k in (metric.needs if metric else ())]
    return {part.key: part.label for part in parts if part is not None}


def _reasons(results: Results, sets: Sequence[str], spec: TableSpec) -> dict[tuple[str, str], list[str]]:
    """`(column header, reason)` -> the cells (`"method / set"`) it leaves empty."""
    notes: dict[tuple[str, str], list[str]] = {}
    for method, by_set in results.items():
        for set_name in sets:
            result = by_set[set_name]
            for col in spec.columns:
                if col.key not in result.values:
                    reason = result.unavailable.get(col.key, NOT_REQUESTED)
                    notes.setdefault((col.header, reason), []).append(f"{method} / {set_name}")
                if col.key in result.unavailable:
                    shown = {c.key for c in spec.columns}
                    for part, header in _needed_parts(col.key).items():
                        if part in result.unavailable and part not in shown:
                            key = (f"{header} (needed by {col.header})", result.unavailable[part])
                            notes.setdefault(key, []).append(f"{method} / {set_name}")
    return notes


def _note_lines(results: Results, sets: Sequence[str], spec: TableSpec) -> list[str]:
    """One line per (column, reason), saying which cells it explains ("every row" when all of them)."""
    cells = len(results) * len(sets)
    lines = []
    for (header, reason), where in _reasons(results, sets, spec).items():
        scope = "every row and set" if len(where) == cells else ", ".join(where)
        lines.append(f"- {header} ({scope}): {reason}")
    return lines


def markdown_table(
    results: Results, sets: Sequence[str], spec: TableSpec, sources: Mapping[str, str] | None = None
) -> str:
    """The table in Markdown: cells `value / value` per set, then notes for unavailable values."""
    headers = " / ".join(c.header for c in spec.columns)
    source_head, source_rule = ("Source | ", "---|") if sources else ("", "")
    lines = [
        f"{spec.caption}.",
        "",
        f"| Method | {source_head}" + " | ".join(sets) + " |",
        f"|---|{source_rule}" + "---:|" * len(sets),
    ]
    for method, by_set in results.items():
        cells = [sources.get(method, "")] if sources else []
        for set_name in sets:
            values = by_set[set_name].values
            parts = [f"{values[c.key]:.{c.digits}f}" if c.key in values else "n/a" for c in spec.columns]
            cells.append(" / ".join(parts))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Cells: {headers}."]
    notes = _note_lines(results, sets, spec)
    if notes:
        lines += ["", "Unavailable values (n/a):", *notes]
    return "\n".join(lines) + "\n"


def csv_table(
    results: Results, sets: Sequence[str], spec: TableSpec, sources: Mapping[str, str] | None = None
) -> str:
    """The same table as CSV, full precision: `method, source, <Set> <metric>, ...`; missing cells say
    `unavailable`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "source", *(f"{s} {c.header}" for s in sets for c in spec.columns)])
    for method, by_set in results.items():
        row = [method, (sources or {}).get(method, "")]
        for set_name in sets:
            values = by_set[set_name].values
            row += [repr(values[c.key]) if c.key in values else UNAVAILABLE for c in spec.columns]
        writer.writerow(row)
    return buffer.getvalue()


def per_image_csv(result: SetResult, metric_keys: Sequence[str]) -> str:
    """One row per image (sorted by name) with every computed metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", *metric_keys])
    for name in sorted(result.per_image):
        row = result.per_image[name]
        writer.writerow([name, *(repr(row[k]) if k in row else UNAVAILABLE for k in metric_keys)])
    return buffer.getvalue()


def write_tables(
    results: Results,
    sets: Sequence[str],
    out_dir: Path,
    sources: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write Tables 3 and 4 (`.md` and `.csv`) and per-image CSVs under `out_dir`; return the paths written.

    `sources`: method -> where its row comes from (checkpoint file and iteration), shown beside the name."""
    present = list(dict.fromkeys(k for by_set in results.values() for r in by_set.values() for k in r.values))
    written = []
    for spec in (table_spec(TABLE3, present), table_spec(TABLE4, present)):
        for suffix, render in ((".md", markdown_table), (".csv", csv_table)):
            path = out_dir / f"{spec.name}{suffix}"
            write_text_atomic(path, render(results, sets, spec, sources))
            written.append(path)
    for method, by_set in results.items():
        for set_name, result in by_set.items():
            keys = list(result.values)
            path = out_dir / "per_image" / safe_label(method) / f"{set_name}.csv"
            write_text_atomic(path, per_image_csv(result, keys))
            written.append(path)
    return written


def safe_label(label: str) -> str:
    """A method label usable as a folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
