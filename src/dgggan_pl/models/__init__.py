"""Plain `nn.Module`s of DGGGAN: the gradient operator, blocks, generator and critics (no training logic)."""

from dgggan_pl.models.critic import VGGCritic
from dgggan_pl.models.generator import DGGGANGenerator, GeneratorOutput
from dgggan_pl.models.gradient import GradientMagnitude, gradient_magnitude

__all__ = ["DGGGANGenerator", "GeneratorOutput", "GradientMagnitude", "VGGCritic", "gradient_magnitude"]
