"""Image-quality metrics of the paper's protocol (docs/metrics.md): PSNR/SSIM on Y, LPIPS, NIQE, Ma, PI.

Each is one `MetricSpec` in `registry.py`; `register(MetricSpec(...))` adds a metric everywhere it is shown.
"""

from dgggan_pl.metrics.fidelity import PSNRY, SSIMY, psnr_y, ssim_y
from dgggan_pl.metrics.niqe import NIQE, NIQEScore, load_pristine_model
from dgggan_pl.metrics.perceptual import LPIPSScore, MaScore
from dgggan_pl.metrics.registry import MetricSettings, MetricSpec, MetricUnavailable, Placement, register
from dgggan_pl.metrics.suite import BenchmarkMetrics

__all__ = [
    "NIQE",
    "PSNRY",
    "SSIMY",
    "BenchmarkMetrics",
    "LPIPSScore",
    "MaScore",
    "MetricSettings",
    "MetricSpec",
    "MetricUnavailable",
    "NIQEScore",
    "Placement",
    "load_pristine_model",
    "psnr_y",
    "register",
    "ssim_y",
]
