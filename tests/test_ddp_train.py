"""Two CPU processes (gloo), launched as a subprocess: ranks end bit-identical, and only because of the sync.

`trainer=ddp_cpu` uses `strategy=ddp_step_sync` (each optimizer step averages its own gradients). The negative
control runs the same job with that reduction switched off: each rank then trains on its own shard and the
ranks' weights must differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.optim import Optimizer

from dgggan_pl.launch.commands import clean_env
from dgggan_pl.strategies import StepSyncDDPStrategy

TESTS_DIR = Path(__file__).resolve().parent
NETWORKS = ("generator", "image_critic", "gradient_critic")
NO_SYNC_STRATEGY = "trainer.strategy={_target_:test_ddp_train.LocalGradientsStrategy}"


class LocalGradientsStrategy(StepSyncDDPStrategy):
    """ddp_step_sync without its gradient all-reduce: the same processes, no synchronisation."""

    def reduce_gradients(self, optimizer: Optimizer) -> None:
        return None


def train_ddp(output_dir: Path, *extra: str) -> list[dict]:
    command = [
        sys.executable,
        "-m",
        "dgggan_pl.train",
        "experiment=full",
        "debug=smoke",
        "trainer=ddp_cpu",
        "logger=none",
        "metrics.lpips=disabled",
        "callbacks.image_panels=null",
        f"hydra.run.dir={output_dir}",
        *extra,
    ]
    env = {
        **clean_env(os.environ),
        "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((output_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_cpu_ddp_keeps_ranks_identical(tmp_path) -> None:
    ranks = train_ddp(tmp_path / "ddp")
    assert [r["global_rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["config_sha256"] == ranks[1]["config_sha256"]
    assert ranks[0]["param_shapes_sha256"] == ranks[1]["param_shapes_sha256"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 8
    assert set(ranks[0]["final_weights_sha256"]) == set(NETWORKS)
    assert ranks[0]["final_weights_sha256"] == ranks[1]["final_weights_sha256"]
    info = json.loads((tmp_path / "ddp" / "run_info.json").read_text())
    assert info["status"] == "completed" and "val/Sample/psnr" in info["metrics"]

    unsynced = train_ddp(tmp_path / "no_sync", NO_SYNC_STRATEGY)
    for network in NETWORKS:
        assert unsynced[0]["final_weights_sha256"][network] != unsynced[1]["final_weights_sha256"][network]
        # with sync, the ranks' common weights are also not simply rank 0's unsynchronised ones
        assert ranks[0]["final_weights_sha256"][network] != unsynced[0]["final_weights_sha256"][network]
