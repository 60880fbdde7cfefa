"""Command line of the GPU check: run the phases in order, each within its budget, and write the report.

One rule for every phase: it runs, or it is skipped with one printed line saying why (a data path it needs is
missing, or the total budget would be passed); a skipped phase does not fail the check.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpu_check.data import MIB, prepare_data, tree_bytes
from gpu_check.phases import PHASES, Check, missing_data, start_train_server
from gpu_check.report import NO_DEVICE, Destination, write_report
from record import REPO_ROOT, RESULTS_DIR

SETTINGS = Path(__file__).resolve().with_name("gpu_check.yaml")
DEFAULT_CARRIED = REPO_ROOT / ".gpu_data"  # ignored by git; the device run carries it
WHEELS = REPO_ROOT / ".whl"
log = logging.getLogger(__name__)


def load_settings(dry_run: bool) -> tuple[DictConfig, DictConfig, float]:
    """(profile settings, data spec, peak TFLOP/s) from gpu_check.yaml."""
    root = OmegaConf.load(SETTINGS)
    assert isinstance(root, DictConfig)
    profile = root.dry_run if dry_run else root.device
    data = OmegaConf.merge(root.data, profile.get("data") or {})
    assert isinstance(data, DictConfig)
    return profile, data, float(root.peak_tflops)


def default_source() -> Path:
    """The data folder as `paths.data_dir` resolves it: $DGGGAN_DATA_DIR, else `data/` in the checkout."""
    return Path(os.environ.get("DGGGAN_DATA_DIR", REPO_ROOT / "data"))


def phase_budget(name: str, spec: DictConfig) -> float:
    if name == "throughput":
        return float(sum(variant.budget_s for variant in spec.variants.values()))
    return float(spec.get("budget_s", 0))


def run_phase(check: Check, name: str) -> dict[str, Any]:
    """One phase, its exceptions recorded (a GPU-only failure in one phase must not lose the others)."""
    spec = check.settings.get(name) or OmegaConf.create({})
    start = time.perf_counter()
    result: dict[str, Any] = {"name": name, "budget_s": phase_budget(name, spec)}
    try:
        figures = PHASES[name].run(check, spec)
        result |= {"status": "failed" if figures.get("passed") is False else "ok", "figures": figures}
    except Exception as error:  # noqa: BLE001 - logged with its traceback, the next phase still runs
        result |= {"status": "error", "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:400]}"}
        log.exception("phase %s failed", name)
    result["seconds"] = time.perf_counter() - start
    return result


def skip_reason(check: Check, name: str, elapsed: float, budget: float) -> str | None:
    """Why phase `name` is not run, or None: a data path it needs is missing, or it would pass the total budget."""
    reason = missing_data(check, PHASES[name], check.settings.get(name) or OmegaConf.create({}))
    total = float(check.settings.total_budget_s)
    if reason is None and elapsed + budget > total:
        reason = f"total budget: {elapsed:.0f} s spent, its {budget:.0f} s would pass {total:.0f} s"
    return reason


def run_check(
    check: Check, names: Sequence[str], header: dict[str, Any], destination: Destination
) -> list[dict[str, Any]]:
    """Run `names` in order, each or its one-line skip; rewrite the result files after each phase."""
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    for name in names:
        budget = phase_budget(name, check.settings.get(name) or OmegaConf.create({}))
        reason = skip_reason(check, name, time.perf_counter() - start, budget)
        if reason is not None:
            print(f"gpu_check: phase {name} skipped: {reason}", flush=True)
            results.append(
                {"name": name, "status": "skipped", "reason": reason, "seconds": 0.0, "budget_s": budget}
            )
        else:
            print(f"gpu_check: phase {name} (budget {budget:.0f} s)", flush=True)
            results.append(run_phase(check, name))
        header["flops_per_iteration_tflop"] = (check.flops_per_iteration or 0) / 1e12 or None
        header["total_seconds"] = round(time.perf_counter() - start, 1)
        write_report(results, header, destination)  # partial results survive a run killed at its limit
    return results


def describe(device: torch.device, dry_run: bool, data_dir: Path | None) -> dict[str, Any]:
    import lightning

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else NO_DEVICE
    return {
        "device": name if not dry_run else NO_DEVICE,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "data_folder": str(data_dir) if data_dir else "none (phases that need it are skipped)",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, gpu_check.md and the runs")
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU at toy sizes")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"data folder (default: {DEFAULT_CARRIED.name}/ if present; the dry run prepares "
        "a toy one from $DGGGAN_DATA_DIR)",
    )
    parser.add_argument("--only", nargs="+", choices=list(PHASES), default=None, help="run only these phases")
    parser.add_argument(
        "--record",
        type=Path,
        nargs="?",
        const=RESULTS_DIR,
        default=None,
        metavar="DIR",
        help=f"also write the result file into DIR (default {RESULTS_DIR.relative_to(REPO_ROOT)}/, where "
        "`python benchmarks/render.py` puts it in docs/benchmarks.md)",
    )
    parser.add_argument(
        "--prepare-data",
        type=Path,
        nargs="?",
        const=DEFAULT_CARRIED,
        default=None,
        metavar="FOLDER",
        help=f"fill the carried data folder (default {DEFAULT_CARRIED.name}/) "
        "from $DGGGAN_DATA_DIR within the device tree's size limit, then exit",
    )
    return parser


def default_data(dry_run: bool, out: Path, spec: DictConfig) -> Path | None:
    """The data folder without `--data`: for a dry run, a toy one prepared from $DGGGAN_DATA_DIR; else the
    carried `.gpu_data/`; else none, and the phases that read one are skipped. A source that cannot fill the toy
    folder (no `sr-benchmarks/` in it) is said in one line, not raised."""
    source = default_source()
    if dry_run and source.is_dir():
        try:
            return Path(prepare_data(source, out / "data", spec, None)["folder"])
        except FileNotFoundError as error:
            shutil.rmtree(out / "data", ignore_errors=True)  # nothing half-copied is left
            print(f"gpu_check: no toy data folder from {source} ({error})", flush=True)
    return DEFAULT_CARRIED if DEFAULT_CARRIED.is_dir() else None


def prepare(target: Path, spec: DictConfig) -> dict[str, Any]:
    """`--prepare-data`: the budget is the device tree's limit minus the tree, the wheels and a margin."""
    used = tree_bytes(REPO_ROOT, [WHEELS] if WHEELS.is_dir() else [])
    budget = int((spec.device_tree_mib - spec.margin_mib) * MIB) - used
    result = prepare_data(default_source(), target, spec, budget)
    result |= {"tree_and_wheels_mib": used / MIB, "total_mib": (used + result["bytes"]) / MIB}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings, data_spec, peak = load_settings(args.dry_run)
    if args.prepare_data is not None:
        result = prepare(args.prepare_data, data_spec)
        print(
            f"prepared {result['folder']}: {result['bytes'] / MIB:.1f} MiB ({result['train_images']} training "
            f"crops of {result['crop_size']} px); with the tree and .whl/ {result['total_mib']:.1f} MiB"
        )
        return 0
    refusal = None  # checked before anything is written, one line each
    if args.out is None:
        refusal = "--out DIR is required (unless --prepare-data)"
    elif not args.dry_run and not torch.cuda.is_available():
        refusal = "no CUDA device (torch.cuda.is_available() is False); use --dry-run to rehearse on the CPU"
    elif args.data is not None and not args.data.is_dir():
        refusal = f"--data {args.data}: no such folder (prepare it with --prepare-data)"
    if refusal is not None:
        parser.exit(2, f"error: {refusal}\n")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data if args.data is not None else default_data(args.dry_run, out, data_spec)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if settings.get("threads"):  # toy convolutions gain nothing from threads on a busy CPU; OMP_NUM_THREADS
        torch.set_num_threads(
            int(settings.threads)
        )  # also stops Lightning's DDP raising them, and reaches the
        os.environ["OMP_NUM_THREADS"] = str(settings.threads)  # train_resume phase's subprocesses
    data_dir = data_dir.resolve() if data_dir is not None else None
    command = shlex.join(["python", "scripts/gpu_check.py", *argv])
    destination = Destination(out, args.dry_run, command, (out, args.record) if args.record else (out,))
    check = Check(settings, out, device, data_dir, data_spec, args.dry_run, peak)
    header = describe(device, args.dry_run, data_dir)
    names = args.only or list(PHASES)
    if "train_resume" in names:
        start_train_server()
    results = run_check(check, names, header, destination)
    print(write_report(results, header, destination), flush=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1
