"""DGGGAN super-resolution in PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
