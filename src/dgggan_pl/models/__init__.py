"""Plain `nn.Module`s of DGGGAN: the gradient operator, blocks, generator and critics (no training logic).

`contract.SRGenerator` states what the rest of the package assumes of a generator.
"""

from dgggan_pl.models.contract import GeneratorOutput, LRFeatures, SRGenerator
from dgggan_pl.models.critic import VGGCritic
from dgggan_pl.models.generator import DGGGANGenerator
from dgggan_pl.models.gradient import GradientMagnitude, gradient_magnitude

__all__ = [
    "DGGGANGenerator",
    "GeneratorOutput",
    "GradientMagnitude",
    "LRFeatures",
    "SRGenerator",
    "VGGCritic",
    "gradient_magnitude",
]
