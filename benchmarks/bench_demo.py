"""`make demo` as a measurement: its time, its held-out gain over bicubic, its model on Set5, and the images the docs
show (Figures 5 and 6, the comparison page, the README's before/after panel), all from the same checkpoint.

    .venv/bin/python benchmarks/bench_demo.py                      # runs `make demo` (minutes) and times it
    .venv/bin/python benchmarks/bench_demo.py --demo-dir DIR       # reuses a finished `make demo DEMO_DIR=DIR`

Writes benchmarks/results/demo.json, docs/images/{figure5_demo,figure6_demo,comparison_page,before_after}.png.
Set5 needs `$DGGGAN_DATA_DIR/sr-benchmarks/Set5`; the screenshot needs chromium (skipped with a line without it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from record import REPO_ROOT, write_result

IMAGES = REPO_ROOT / "docs" / "images"
FIGURE_SET = "Set5"
PANEL_BOX = ("40", "8", "40")  # LR crop x, y, size of the before/after panel: fur, whiskers and an eye
SCREENSHOT_SIZE = "1400,400"  # chromium window (pixels): the page's first screen
SCREENSHOT_BUDGET_MS = "10000"  # chromium virtual time for the page's scripts to load the images
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def run(command: list[str], **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT, **kwargs)


def make_demo(demo_dir: Path) -> float:
    start = time.perf_counter()
    run(["make", "demo", f"DEMO_DIR={demo_dir}"])
    return time.perf_counter() - start


def read_table_csvs(out_dir: Path, set_name: str) -> dict[str, dict[str, float]]:
    """method label -> metric -> value, from the evaluation's table CSVs (`<Set> <METRIC>` columns)."""
    values: dict[str, dict[str, float]] = {}
    for path in sorted(out_dir.glob("*.csv")):
        with path.open(newline="") as stream:
            for row in csv.DictReader(stream):
                for column, cell in row.items():
                    if column.startswith(f"{set_name} ") and cell not in ("", "unavailable"):
                        metric = column[len(set_name) + 1 :].split()[0].lower()
                        values.setdefault(row["method"], {})[metric] = float(cell)
    return values


def figures_on_set5(checkpoint: Path, data_dir: Path, out_dir: Path) -> dict[str, dict[str, float]]:
    """Run `dgggan_pl.figures` (bicubic vs the demo) on Set5; copy Figures 5 and 6; return the Set5 table."""
    run([
        sys.executable, "-m", "dgggan_pl.figures", f"models=[bicubic,{checkpoint}]", "labels=[Bicubic,demo]",
        f"sets=[{FIGURE_SET}]", "metrics.lpips=disabled", f"paths.data_dir={data_dir}", "logger=none",
        f"hydra.run.dir={out_dir}",
    ])  # fmt: skip
    for number in (5, 6):
        shutil.copyfile(out_dir / f"figure{number}.png", IMAGES / f"figure{number}_demo.png")
    return read_table_csvs(out_dir, FIGURE_SET)


def screenshot(page: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: docs/images/comparison_page.png not regenerated")
        return False
    with tempfile.TemporaryDirectory() as profile:
        run([
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--virtual-time-budget={SCREENSHOT_BUDGET_MS}",
            f"--window-size={SCREENSHOT_SIZE}", f"--screenshot={IMAGES / 'comparison_page.png'}",
            page.resolve().as_uri(),
        ])  # fmt: skip
    return True


def seconds_between(started: str, finished: str) -> float:
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--demo-dir", type=Path, default=None, help="a finished `make demo DEMO_DIR=...` folder"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("DGGGAN_DATA_DIR", DEFAULT_DATA))
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = args.demo_dir or Path(tmp) / "demo"
        wall = None if args.demo_dir else make_demo(demo_dir)
        record = json.loads((demo_dir / "metrics.json").read_text())
        checkpoint = demo_dir / "run" / "checkpoints" / "last.ckpt"
        set5 = figures_on_set5(checkpoint, args.data_dir, Path(tmp) / "figures")
        shot = screenshot(Path(tmp) / "figures" / "comparison.html")
        run([
            sys.executable, "scripts/before_after.py", "--weights", str(checkpoint),
            "--lr", str(demo_dir / "chelsea_lr.png"), "--hr", str(demo_dir / "chelsea_hr.png"),
            "--box", *PANEL_BOX, "--out", str(IMAGES / "before_after.png"),
        ])  # fmt: skip
    figures = {
        "timing": {
            "make_demo_seconds": wall,
            "training_run_seconds": seconds_between(record["started"], record["finished"]),
        },
        "held_out": record["sets"],
        FIGURE_SET: {
            "demo": set5["demo"],
            "bicubic": set5["Bicubic"],
            "gain": {m: set5["demo"][m] - set5["Bicubic"][m] for m in set5["demo"] if m in set5["Bicubic"]},
        },
    }
    write_result(
        "demo",
        figures,
        title="make demo: time, held-out gain, Set5",
        notes="`held_out`: the demo's test set (Sample: chelsea, rocket; never trained on), as demo_outputs/metrics.md. "
        f"`{FIGURE_SET}`: `python -m dgggan_pl.figures 'models=[bicubic,<demo>/run/checkpoints/last.ckpt]' "
        f"'labels=[Bicubic,demo]' sets=[{FIGURE_SET}] metrics.lpips=disabled`, which also made Figures 5 and 6 "
        f"(docs/metrics.md){' and the comparison-page screenshot' if shot else ''}. `make_demo_seconds` is null when "
        "an existing demo folder was reused (`--demo-dir`); `training_run_seconds` is from its run_info.json.",
    )


if __name__ == "__main__":
    main()
