"""Reference generators for complexity comparisons only (Table 5): ESRGAN's RRDBNet and SPSR's generator."""

from dgggan_pl.models.baselines.rrdbnet import RRDBNet
from dgggan_pl.models.baselines.spsr import SPSRGenerator

__all__ = ["RRDBNet", "SPSRGenerator"]
