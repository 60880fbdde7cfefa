"""The paper's reference generators: ESRGAN's RRDBNet and SPSR's generator.

Both are counted in the complexity comparison (Table 5); RRDBNet also trains in this pipeline (`model=rrdbnet`).
"""

from dgggan_pl.models.baselines.rrdbnet import RRDBNet
from dgggan_pl.models.baselines.spsr import SPSRGenerator

__all__ = ["RRDBNet", "SPSRGenerator"]
