"""The one spelling of a benchmark metric's log key: `<stage>/<Set>/<metric>` (`val/Set14/pi`, `test/Set5/psnr`).

Training logs under it, the W&B callback and dashboard define and plot it, the sweep report and the GPU check read
it back. It imports nothing, so any module may use it without pulling in what the metrics need.
"""

from __future__ import annotations


def benchmark_key(stage: str, set_name: str, metric: str) -> str:
    """`benchmark_key("val", "Set14", "pi")` -> `"val/Set14/pi"`: the key of `metric` on `set_name` in `stage`."""
    return f"{stage}/{set_name}/{metric}"
