"""The check's results: a result file of `benchmarks/record.py` and the Markdown table `gpu_check.md` (printed).

The result file is `gpu_check.json` (`gpu_check_dry_run.json` for the CPU rehearsal, so that a rehearsal never
replaces a device run's figures) in the output folder and, with `--record`, in benchmarks/results/, where
`python benchmarks/render.py` puts it in docs/benchmarks.md like every other benchmark's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgggan_pl.metrics.keys import benchmark_key
from dgggan_pl.utils.atomic import write_text_atomic
from record import write_result

NO_DEVICE = "no device (dry run on CPU)"
DRY_RUN_NOTES = (
    "The CPU rehearsal of every phase (`--dry-run`, docs/gpu.md): toy sizes (debug=smoke widths, HR 32, batch 2, "
    "a few iterations per phase) and a shared CPU, so it proves the plumbing, not GPU figures; the FLOPs are the "
    "toy model's. A phase skipped for missing data says which path it needs."
)
DEVICE_NOTES = (
    "The GPU check on one CUDA GPU (docs/gpu.md says what each figure means); a phase skipped for missing "
    "data or for the total budget says why."
)


@dataclass(frozen=True)
class Destination:
    """Where one run of the check writes: `gpu_check.md` in `out`, its result file in each of `results_dirs`."""

    out: Path
    dry_run: bool
    command: str  # the command line, recorded in the result file
    results_dirs: tuple[Path, ...]

    @property
    def name(self) -> str:
        return "gpu_check_dry_run" if self.dry_run else "gpu_check"


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _throughput_rows(figures: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, result in figures.items():
        if not isinstance(result, Mapping):  # "passed"
            continue
        if "error" in result:
            rows.append([f"throughput {name}", "error", result["error"]])
            continue
        stop = "budget" if result.get("stopped_by_budget") else "iterations"
        rows.append(
            [
                f"throughput {name}",
                f"{_number(result.get('iterations_per_s'))} it/s",
                f"{_number(result.get('achieved_tflops'))} TFLOP/s = {_number(result.get('fraction_of_peak'))} "
                f"of peak; peak memory {_number(result.get('peak_memory_gib'))} GiB; {result.get('precision')}; "
                f"cudnn.benchmark {_number(result.get('cudnn_benchmark'))}; {result.get('timed_iterations')} "
                f"timed of {result.get('iterations')} (stopped by {stop})",
            ]
        )
    return rows


def _learning_rows(figures: Mapping[str, Any]) -> list[list[str]]:
    rows = [
        [
            "learning curve",
            f"{_number(figures.get('train_seconds'))} s",
            f"{figures.get('iterations')} iterations, {_number(figures.get('iterations_per_s'))} it/s",
        ]
    ]
    bicubic = figures.get("bicubic", {})
    for point in figures.get("curve", []):
        cells = [
            f"{name} {point[key]:.2f} dB ({point[key] - psnr:+.2f} vs bicubic)"
            for name, psnr in bicubic.items()
            if (key := benchmark_key("val", name, "psnr")) in point
        ]
        rows.append([f"  iteration {point['iteration']}", f"{point['seconds']} s", "; ".join(cells)])
    return rows


def _headline(name: str, figures: Mapping[str, Any]) -> str | None:
    """The one number a phase is read for, where it has one."""
    if name == "flops":
        return f"{_number(figures.get('iteration_tflop'))} TFLOP per iteration"
    if name == "host_syncs":
        return f"{_number(figures.get('syncs_per_iteration'))} per iteration"
    if name == "upscale":
        half = [k for k in figures if k.endswith("_s") and not k.startswith("fp32")]
        times = "; ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {figures[k]:.2f} s"
            for k in [*(k for k in figures if k.startswith("fp32") and k.endswith("_s")), *half]
        )
        return times
    return None


def _generic_row(name: str, figures: Mapping[str, Any]) -> list[str]:
    passed = figures.get("passed")
    shown = {k: v for k, v in figures.items() if k != "passed" and not isinstance(v, Mapping | list)}
    details = ", ".join(f"{k} {_number(v)}" for k, v in shown.items())
    headline = _headline(name, figures)
    verdict = "n/a" if passed is None else ("pass" if passed else "FAIL")
    return [name, headline if headline is not None and passed is None else verdict, details]


def table(results: Sequence[Mapping[str, Any]], header: Mapping[str, Any]) -> str:
    """One Markdown table: a row per phase (per variant, per curve point), then each phase's status."""
    lines = [f"# GPU check: {header['device']}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "device"]
    lines += ["", "| phase | figure | details |", "|---|---|---|"]
    for result in results:
        name, figures = result["name"], result.get("figures") or {}
        if result["status"] not in ("ok", "failed"):
            lines.append(f"| {name} | {result['status']} | {result.get('reason', '')} |")
            continue
        if name == "throughput":
            rows = _throughput_rows(figures)
        elif name == "learning_curve":
            rows = _learning_rows(figures)
        else:
            rows = [_generic_row(name, figures)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    lines += ["", "| phase | status | seconds | budget s |", "|---|---|---:|---:|"]
    for result in results:
        lines.append(
            f"| {result['name']} | {result['status']} | {result['seconds']:.1f} | {_number(result['budget_s'])} |"
        )
    return "\n".join(lines) + "\n"


def figures(results: Sequence[Mapping[str, Any]], header: Mapping[str, Any]) -> dict[str, Any]:
    """The result file's figures: the header, then each phase by name (`phases.<name>.figures.<key>`)."""
    phases = {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in results}
    return {"header": dict(header), "phases": phases}


def write_report(
    results: Sequence[Mapping[str, Any]], header: Mapping[str, Any], destination: Destination
) -> str:
    """Write the result file (benchmarks/record.py) and `gpu_check.md`, atomically; returns the Markdown."""
    text = table(results, header)
    title = f"GPU check: {header['device']}"
    notes = DRY_RUN_NOTES if destination.dry_run else DEVICE_NOTES
    for folder in destination.results_dirs:
        write_result(
            destination.name,
            figures(results, header),
            title=title,
            notes=notes,
            command=destination.command,
            results_dir=folder,
            quiet=True,
        )
    write_text_atomic(destination.out / "gpu_check.md", text)
    return text
