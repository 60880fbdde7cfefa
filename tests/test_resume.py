"""Exact resume: N iterations straight == N/2, then `ckpt_path=last`, then N/2 more (bit for bit, CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from dgggan_pl.train import train

ITERATIONS = 6
# Three iterations per epoch (6 samples / batch 2): the resume point is an epoch boundary. Lightning restarts
# a plain DataLoader's epoch from its first batch when resuming mid-epoch (see docs/training.md).
RESUME = [
    "experiment=full",
    "debug=smoke",
    "logger=none",
    "data.samples_per_epoch=6",
    f"trainer.val_check_interval={ITERATIONS // 2}",
    "callbacks.image_panels=null",
    "metrics.lpips=disabled",
    "data.test_sources={}",
]


def run(compose, output_dir: Path, iterations: int, ckpt_path: str | None = None) -> dict:
    overrides = [*RESUME, f"paths.output_dir={output_dir}", f"iterations={iterations}"]
    if ckpt_path is not None:
        overrides.append(f"ckpt_path={ckpt_path}")
    train(compose(overrides))
    return torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_resume_from_last_is_bit_identical(compose, tmp_path) -> None:
    straight = run(compose, tmp_path / "straight", ITERATIONS)
    half = run(compose, tmp_path / "resumed", ITERATIONS // 2)
    assert half["dgggan"]["iteration"] == ITERATIONS // 2
    resumed = run(compose, tmp_path / "resumed", ITERATIONS, ckpt_path="last")

    assert resumed["global_step"] == straight["global_step"] == 2 * ITERATIONS
    assert resumed["dgggan"]["iteration"] == ITERATIONS
    state, expected = resumed["state_dict"], straight["state_dict"]
    assert state.keys() == expected.keys()
    assert {k.split(".", 1)[0] for k in state} == {"generator", "image_critic", "gradient_critic"}
    different = [key for key in expected if not torch.equal(state[key], expected[key])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # and the resumed half really trained: weights moved since the checkpoint it started from
    assert any(not torch.equal(half["state_dict"][key], state[key]) for key in state)
