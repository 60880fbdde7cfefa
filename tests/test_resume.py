"""Exact resume: N iterations straight == N/2, then `ckpt_path=last`, then N/2 more (bit for bit, CPU).

The stateful training loader (`dgggan_pl.data.sampling.ResumableLoader`) makes this hold mid-epoch too.
"""

from __future__ import annotations

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
