"""Host synchronisations in a training iteration: one per optimizer step (whether to step), nothing else.

On a GPU, reading a device value on the host (`.item()`, `bool(t)`, `float(t)`, ...) waits for every kernel
queued so far, and so does turning a Python number into a device tensor (what `self.log(name, 1.0)` does).
These tests count the first kind on CPU with patched `Tensor` methods (`host_sync_probe`), and require the
second kind to be absent (every value the step logs is already a tensor), so neither can creep back unnoticed:
in one process, and on every rank of a 2-process DDP run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from dgggan_pl.launch.commands import clean_env
from dgggan_pl.module import DGGGANModule
from host_sync_probe import HostReads
from test_module import fit

TESTS_DIR = Path(__file__).resolve().parent


class SyncCounter(HostReads):
    """`HostReads` patched with pytest's monkeypatch (undone after the test), counting inside `counting()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.install(lambda name, value: monkeypatch.setattr(torch.Tensor, name, value))

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


class CountingModule(DGGGANModule):
    """DGGGANModule that counts host reads inside `training_step` and records what it logs."""

    counter: SyncCounter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged: dict[str, type] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.counter.counting():
            super().training_step(batch, batch_idx)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.logged[name] = type(value)
        super().log(name, value, *args, **kwargs)


def train_counting(compose, monkeypatch, overrides: list[str], iterations: int) -> CountingModule:
    # no perceptual term: its VGG19 costs seconds to build and reads nothing on the host
    cfg = compose(["experiment=full", "debug=smoke", "loss.terms.percept.weight=0", *overrides])
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim")}
    module = CountingModule(**parts, metrics=None, seed=0)
    module.counter = SyncCounter(monkeypatch)
    fit(module, iterations)
    assert module.iteration == iterations
    return module


@pytest.mark.parametrize(
    ("overrides", "steps_per_iteration"),
    [([], 2), (["experiment=pretrain"], 1)],
    ids=["gan", "pretrain"],
)
def test_one_host_read_per_optimizer_step(compose, monkeypatch, overrides, steps_per_iteration) -> None:
    iterations = 2
    module = train_counting(compose, monkeypatch, overrides, iterations)
    assert module.counter.reads == Counter({"__bool__": iterations * steps_per_iteration})
    python_numbers = {name: kind.__name__ for name, kind in module.logged.items() if kind is not Tensor}
    assert not python_numbers, f"logged as Python numbers (a host-to-device copy each): {python_numbers}"
    assert {"train/iteration", "train/lr_g", "train/loss_g"} <= set(module.logged)


# Where a 2-rank DDP run reads values between training steps, and why none of them is the step's.
STEP_DECISION = "dgggan_pl/module.py:_finite_on_every_rank"  # the one read per optimizer step
SIGTERM_BROADCAST = "lightning/pytorch/loops/training_epoch_loop.py:_broadcast_sigterm_tensor"
LOGGED_SCALARS = "lightning/fabric/utilities/apply_func.py:to_item"  # every `log_every_n_steps`
DATA_LOADING = (
    "dgggan_pl/data/"  # CPU tensors of the crop/flip draws (in DataLoader workers when num_workers > 0)
)


@pytest.mark.slow
def test_one_host_read_per_optimizer_step_on_every_rank_of_ddp(tmp_path) -> None:
    """The claim above under 2-rank DDP (`trainer=ddp_cpu`, gloo): inside each GAN iteration every rank reads
    exactly twice, both at the step decision. Before each batch Lightning's loop adds one read under DDP (it
    broadcasts rank 0's SIGTERM flag, in Lightning 2.6), besides the logged scalars and the data's CPU draws."""
    iterations = 3
    command = [
        sys.executable, "-m", "dgggan_pl.train", "experiment=full", "debug=smoke", "loss.terms.percept.weight=0",
        "trainer=ddp_cpu", "logger=none", "callbacks.image_panels=null", f"iterations={iterations}",
        "trainer.val_check_interval=1000", "+callbacks.host_syncs={_target_:host_sync_probe.HostSyncProbe}",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    env = {
        **clean_env(os.environ),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / "ranks" / f"host_syncs{rank}.json").read_text())
        assert record["world_size"] == 2
        assert record["in_batch"] == [{STEP_DECISION: 2}] * iterations
        for before in record["before_batch"][1:]:  # the first one also holds the epoch's sampler set-up
            others = {site: n for site, n in before.items() if not site.startswith(DATA_LOADING)}
            assert set(others) == {SIGTERM_BROADCAST, LOGGED_SCALARS}  # debug=smoke logs every step
            assert others[SIGTERM_BROADCAST] == 1
