"""The demo's training makes no network attempt, and says each unavailable metric's reason once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every way out of the process raises and leaves a mark on stderr.
BLOCK_NETWORK = """
import runpy, socket, sys

def blocked(*args, **kwargs):
    print("NETWORK ATTEMPT", args[1:] or args, file=sys.stderr, flush=True)
    raise OSError("network blocked by the test")

socket.socket.connect = socket.socket.connect_ex = blocked
socket.getaddrinfo = socket.create_connection = blocked
sys.argv = ["dgggan_pl.train", *sys.argv[1:]]
runpy.run_module("dgggan_pl.train", run_name="__main__")
"""


@pytest.mark.slow
def test_demo_training_offline_has_no_network_attempt_and_no_repeats(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),  # empty caches: nothing to find, nothing may be fetched
        "DGGGAN_DATA_DIR": str(tmp_path / "data"),
        "WANDB_MODE": "offline",
    }
    overrides = [
        "experiment=demo",
        "debug=smoke",
        "metrics.lpips=disabled",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_NETWORK, *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "NETWORK ATTEMPT" not in output
    for metric in ("niqe", "ma", "pi"):
        assert output.count(f"metric '{metric}' unavailable") == 1, (metric, output[-3000:])
    assert output.count("NIQE model not found") == 1, "the long NIQE reason is printed once, not per use"
    assert "dgggan_pl.metrics.suite" in output and "hydra/_internal" not in output  # attributed to us
    assert "litlogger" not in output and "LeafSpec" not in output  # known dependency noise is silenced
    assert "metric 'lpips' unavailable" not in output, "a disabled metric is not a warning"
