"""Console scripts (pyproject [project.scripts]): every entry point is installed and starts."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SCRIPTS = {
    "dgggan-train": "dgggan_pl.train:main",
    "dgggan-evaluate": "dgggan_pl.evaluate:main",
    "dgggan-upscale": "dgggan_pl.upscale:main",
    "dgggan-export": "dgggan_pl.export:main",
    "dgggan-report": "dgggan_pl.report:main",
    "dgggan-prepare": "dgggan_pl.prepare:main",
    "dgggan-figures": "dgggan_pl.figures:main",
    "dgggan-dashboard": "dgggan_pl.dashboard:main",
}


def test_every_entry_point_is_declared_and_loads() -> None:
    installed = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("dgggan-")}
    assert {name: e.value for name, e in installed.items()} == SCRIPTS
    for entry in installed.values():
        assert callable(entry.load()), entry.value


@pytest.mark.slow
@pytest.mark.parametrize("script", ["dgggan-export", "dgggan-evaluate"])
def test_script_runs_from_the_venv_bin(script: str) -> None:
    """One argparse and one Hydra entry point, started as a user would after `make install`."""
    path = Path(sys.executable).parent / script
    assert path.is_file(), f"{path} missing: run `make install` (pip install -e .) after pyproject changes"
    done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("usage:" in done.stdout) if script == "dgggan-export" else ("models" in done.stdout)
