"""The one writer of benchmark result files: `benchmarks/results/<name>.json`, rendered into docs/benchmarks.md.

Every benchmark in this folder ends with `write_result(...)`: the figures it measured (nested dicts of numbers
and short strings), the exact command, when, and the state of the box (CPUs, load average, threads, torch,
GPU, git commit), so that a figure quoted in the docs can be traced to the run that produced it. Docs quote a
figure with a marker, `<!--name:key.path-->29.81`, that `tests/test_docs_figures.py` checks against the file.

    from record import write_result   # benchmarks are run as scripts: this folder is on sys.path
    write_result("upscale", {"dgggan": {"peak_rss_gib": 1.06}}, title="Tiled upscaling", notes="...")
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dgggan_pl.utils.atomic import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parents[1]
FORMAT = "dgggan-pl-benchmark-result"
VERSION = 1


def box_state() -> dict[str, Any]:
    """What a timing depends on: CPUs, load average, torch threads and version, GPU, git commit."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load] if load else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} + uncommitted changes" if dirty else head


def current_command() -> str:
    """The command line that is running, relative to the repository root where possible."""
    args = list(sys.argv)
    with contextlib.suppress(ValueError):
        args[0] = str(Path(args[0]).resolve().relative_to(REPO_ROOT))
    return shlex.join(["python", *args])


def write_result(
    name: str,
    figures: dict[str, Any],
    *,
    title: str,
    notes: str = "",
    command: str | None = None,
    results_dir: Path = RESULTS_DIR,
    quiet: bool = False,
) -> Path:
    """Write `results_dir/<name>.json` atomically (a crashed write leaves the previous file) and print its path
    (`quiet`: not, for a writer that rewrites it as it goes, such as the GPU check after each phase)."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "title": title,
        "provenance": "measured",
        "command": command or current_command(),
        "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "box": box_state(),
        "notes": notes,
        "figures": figures,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    if not quiet:
        print(f"wrote {path} (render docs/benchmarks.md with: python benchmarks/render.py)")
    return path
