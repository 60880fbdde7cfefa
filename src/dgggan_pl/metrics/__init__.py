"""Image-quality metrics of the paper's protocol (docs/metrics.md): PSNR/SSIM on Y, LPIPS, NIQE, Ma, PI."""

from dgggan_pl.metrics.fidelity import PSNRY, SSIMY, psnr_y, ssim_y
from dgggan_pl.metrics.niqe import NIQE, NIQEScore, load_pristine_model
from dgggan_pl.metrics.perceptual import LPIPSScore, MaScore
from dgggan_pl.metrics.suite import BenchmarkMetrics

__all__ = [
    "NIQE",
    "PSNRY",
    "SSIMY",
    "BenchmarkMetrics",
    "LPIPSScore",
    "MaScore",
    "NIQEScore",
    "load_pristine_model",
    "psnr_y",
    "ssim_y",
]
