"""Exact resume: N iterations straight == N/2, then `ckpt_path=last`, then N/2 more (bit for bit, CPU).

The stateful training loader (`dgggan_pl.data.resumable_loader.ResumableLoader`) makes this hold mid-epoch too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dgggan_pl.train import train

ITERATIONS = 6
RESUME = [
    "experiment=full",
    "debug=smoke",
    "logger=none",
    f"trainer.val_check_interval={ITERATIONS // 2}",
    "callbacks.image_panels=null",
    "metrics.lpips=disabled",
    "data.test_sources={}",
]


def run(
    compose, output_dir: Path, iterations: int, samples_per_epoch: int, ckpt_path: str | None = None
) -> dict:
    overrides = [
        *RESUME,
        f"data.samples_per_epoch={samples_per_epoch}",
        f"paths.output_dir={output_dir}",
        f"iterations={iterations}",
    ]
    if ckpt_path is not None:
        overrides.append(f"ckpt_path={ckpt_path}")
    train(compose(overrides))
    return torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)


# Batch 2 (debug=smoke): 8 samples are 4 iterations per epoch, so the checkpoint after 3 is mid-epoch and the
# resumed half crosses into the next epoch; 6 samples put the checkpoint on an epoch boundary.
@pytest.mark.parametrize(
    ("samples_per_epoch", "batches_left"), [(8, 1), (6, 0)], ids=["mid-epoch", "epoch-boundary"]
)
def test_resume_from_last_is_bit_identical(compose, tmp_path, samples_per_epoch, batches_left) -> None:
    straight = run(compose, tmp_path / "straight", ITERATIONS, samples_per_epoch)
    half = run(compose, tmp_path / "resumed", ITERATIONS // 2, samples_per_epoch)
    assert half["dgggan"]["iteration"] == ITERATIONS // 2
    (loader_state,) = half["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["batches_per_epoch"] - loader_state["batches"] == batches_left
    resumed = run(compose, tmp_path / "resumed", ITERATIONS, samples_per_epoch, ckpt_path="last")

    assert resumed["global_step"] == straight["global_step"] == 2 * ITERATIONS
    assert resumed["dgggan"]["iteration"] == ITERATIONS
    state, expected = resumed["state_dict"], straight["state_dict"]
    assert state.keys() == expected.keys()
    assert {k.split(".", 1)[0] for k in state} == {"generator", "image_critic", "gradient_critic"}
    different = [key for key in expected if not torch.equal(state[key], expected[key])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # and the resumed half really trained: weights moved since the checkpoint it started from
    assert any(not torch.equal(half["state_dict"][key], state[key]) for key in state)


README = Path(__file__).resolve().parents[1] / "README.md"
KILL_AT_SAVE = 4  # saves: best-2, last@2, best-4, last@4 <- killed while writing this one
SHRINK = [  # appended to the README's command: the same tiny run as the killed one
    "debug=smoke",
    "logger=csv",
    "iterations=6",
    "trainer.val_check_interval=2",
    "metrics.lpips=disabled",
    "data.test_sources={}",
]
KILLED_RUN = f"""
import os, signal, sys
import torch
real_save, calls = torch.save, [0]
def save(obj, file, *args, **kwargs):
    calls[0] += 1
    if calls[0] == {KILL_AT_SAVE}:
        file.write(b"partial")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the checkpoint write
    return real_save(obj, file, *args, **kwargs)
torch.save = save
from dgggan_pl.train import main
sys.argv = ["dgggan_pl.train", *sys.argv[1:]]
main()
"""


def readme_resume_command() -> list[str]:
    """The README's `resume=latest` line, as a user would copy it (comment stripped)."""
    import shlex

    (line,) = [
        line for line in README.read_text().splitlines() if "resume=latest" in line and "python" in line
    ]
    return shlex.split(line.split("#", 1)[0])


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two CLI trainings; minutes each on a loaded 2-core box
def test_readme_resume_after_kill_9_during_a_checkpoint_save(tmp_path) -> None:
    import csv
    import subprocess
    import sys

    command = readme_resume_command()
    assert command[:3] == ["python", "-m", "dgggan_pl.train"] and "resume=latest" in command
    experiment = [arg for arg in command[3:] if arg != "resume=latest"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *experiment, *SHRINK],
        cwd=tmp_path,
        capture_output=True,
        timeout=1200,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("*/runs/*")
    assert list((run / "checkpoints").glob(".*.tmp"))  # the interrupted write left its temp file

    resumed = subprocess.run(
        [sys.executable, *command[1:], *SHRINK], cwd=tmp_path, capture_output=True, text=True, timeout=1200
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run folder (completed): {run.resolve()}" in resumed.stdout
    assert list((tmp_path / "outputs").glob("*/runs/*")) == [run]  # resumed in place, no new folder
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert (run / ".hydra" / "overrides.yaml").is_file() and list(
        (run / ".hydra").glob("resume-*/config.yaml")
    )
    assert "resume=latest" not in (run / ".hydra" / "overrides.yaml").read_text()  # the start's record kept

    (log_dir,) = (run / "csv").iterdir()  # one log folder, continued
    with (log_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows if row["train/loss_g"]] == [1, 2, 3, 4, 5, 6]
    assert [int(row["step"]) for row in rows if row["val/Sample/psnr"]] == [2, 4, 6]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["dgggan"]["iteration"] == 6


class FakeCuda:
    """`torch.cuda` RNG functions of a machine with `count` GPUs, recording which states are set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.restored: dict[int, torch.Tensor] = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(
            torch.cuda,
            "get_rng_state_all",
            lambda: [torch.full((4,), i, dtype=torch.uint8) for i in range(count)],
        )
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda state, device: self.restored.__setitem__(int(device), state)
        )


@pytest.mark.parametrize(("saved", "present"), [(8, 8), (8, 2), (2, 4), (4, 0)])
def test_resume_restores_the_cuda_rng_states_that_exist(
    monkeypatch, caplog, saved: int, present: int
) -> None:
    """A checkpoint of an 8-GPU node resumed on 2 GPUs (or none) restores what exists and says so."""
    from dgggan_pl.module import capture_rng_state, restore_rng_state

    FakeCuda(monkeypatch, saved)
    state = capture_rng_state()
    assert len(state["cuda"]) == saved
    cuda = FakeCuda(monkeypatch, present)
    with caplog.at_level("WARNING", logger="dgggan_pl.module"):
        restore_rng_state(state)
    restored = min(saved, present)
    assert sorted(cuda.restored) == list(range(restored))
    assert all(int(cuda.restored[i][0]) == i for i in range(restored))  # GPU i gets GPU i's state
    warnings = [r.getMessage() for r in caplog.records if "CUDA RNG states" in r.getMessage()]
    if saved == present:
        assert not warnings
    else:
        assert warnings == [
            f"checkpoint holds CUDA RNG states of {saved} GPU(s), this process sees {present}: restoring "
            f"{restored}; the resumed run is not bit-identical to an uninterrupted one"
        ]
