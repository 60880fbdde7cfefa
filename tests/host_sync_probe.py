"""Counting host reads of tensor values (`.item()`, `bool(t)`, ...), in a test process or in a training run.

On a GPU each such read waits for every kernel queued so far. `HostReads` patches the `Tensor` methods that
hand a value to the host and counts their calls while active; `HostSyncProbe` is a callback that counts them
per training batch in a real run (e.g. every rank of a DDP launch, with `+callbacks.host_syncs=...` and this
folder on PYTHONPATH) and writes `<run>/ranks/host_syncs<rank>.json`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

# Tensor methods that hand a device value to the host.
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
TORCH_OPTIM = str(Path(torch.optim.__file__).parent)


def reads_a_host_value(caller: FrameType) -> bool:
    """torch.optim reads its per-parameter step counters, which it keeps on the CPU (capturable=False) even
    for GPU parameters: not a device synchronisation."""
    return caller.f_code.co_filename.startswith(TORCH_OPTIM)


class HostReads:
    """Counts host reads of tensor values while `active` (into `reads`), patched onto `torch.Tensor` by
    `install(setter)`; `setter(name, function)` is how the patch is applied (pytest's monkeypatch, or setattr)."""

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()  # by method
        self.sites: Counter[str] = Counter()  # by the function that read: `<file>:<function>`
        self.active = False
        self.originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def install(self, setter: Callable[[str, Any], None]) -> None:
        for name, original in self.originals.items():

            def counted(
                tensor: torch.Tensor, *args: Any, _original=original, _name=name, **kwargs: Any
            ) -> Any:
                caller = sys._getframe(1)
                if self.active and not reads_a_host_value(caller):
                    self.reads[_name] += 1
                    self.sites[site(caller)] += 1
                return _original(tensor, *args, **kwargs)

            setter(name, counted)

    def uninstall(self) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    def take(self) -> dict[str, int]:
        """The reads since the last `take`, by site."""
        sites, self.sites, self.reads = dict(self.sites), Counter(), Counter()
        return sites


def site(frame: FrameType) -> str:
    """`<path below site-packages or src>:<function>` of a frame, e.g. `dgggan_pl/module.py:_optimize`."""
    path = frame.f_code.co_filename
    for marker in ("site-packages/", "src/"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            break
    return f"{path}:{frame.f_code.co_name}"


class HostSyncProbe(Callback):
    """Per training batch, by site: the host reads inside it (`on_train_batch_start` to `on_train_batch_end`:
    the training step with its optimizer steps) and before it (from the previous batch's end: Lightning's
    loop, logging, data loading)."""

    def __init__(self) -> None:
        self.counter = HostReads()
        self.in_batch: list[dict[str, int]] = []
        self.before_batch: list[dict[str, int]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counter.install(lambda name, value: setattr(torch.Tensor, name, value))
        self.counter.active = True

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.before_batch.append(self.counter.take())

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.in_batch.append(self.counter.take())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counter.active = False
        self.counter.uninstall()
        path = Path(trainer.default_root_dir) / "ranks" / f"host_syncs{trainer.global_rank}.json"
        record = {
            "in_batch": self.in_batch,
            "before_batch": self.before_batch,
            "world_size": trainer.world_size,
        }
        path.write_text(json.dumps(record))
