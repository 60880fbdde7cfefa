"""Host synchronisations in a training iteration: one per optimizer step (whether to step), nothing else.

On a GPU, reading a device value on the host (`.item()`, `bool(t)`, `float(t)`, ...) waits for every kernel
queued so far, and so does turning a Python number into a device tensor (what `self.log(name, 1.0)` does).
These tests count the first kind on CPU with patched `Tensor` methods, and require the second kind to be
absent (every value the step logs is already a tensor), so neither can creep back unnoticed.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from dgggan_pl.module import DGGGANModule
from test_module import fit

# Tensor methods that hand a device value to the host.
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


TORCH_OPTIM = str(Path(torch.optim.__file__).parent)


def _reads_a_host_value(caller: FrameType) -> bool:
    """torch.optim reads its per-parameter step counters, which it keeps on the CPU (capturable=False) even
    for GPU parameters: not a device synchronisation."""
    return caller.f_code.co_filename.startswith(TORCH_OPTIM)


class SyncCounter:
    """Counts host reads of tensor values while `active`, patched onto `torch.Tensor`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: Counter[str] = Counter()
        self.active = False
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor: Tensor, *args: Any, _original=original, _name=name, **kwargs: Any) -> Any:
                if self.active and not _reads_a_host_value(sys._getframe(1)):
                    self.reads[_name] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

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
