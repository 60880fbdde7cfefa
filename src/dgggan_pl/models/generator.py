"""The DGGGAN generator: an image branch and a gradient branch with deep gradient guidance (docs/design.md).

The forward pass is written once, as two stages that tiled inference (`dgggan_pl.tiling`) drives too:
`encode(lr, run)` (everything at LR resolution; every local op is applied through `run`) and
`decode(features, lr)` (the x`scale` tails, fusion, output convs and the optional global skip); the contract
is `dgggan_pl.models.contract.SRGenerator`. This is the network only: loading, saving, tiling and `upscale` are
the model layer's (`dgggan_pl.SRModel`); the constructor's arguments are recorded as `config`
(`init_args.records_init_args`), which `SRModel.save_pretrained` writes beside the weights.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dgggan_pl.models.blocks import (
    EnhancedMultiScaleResidualBlock,
    UpsampleTail,
    conv3x3,
    outside_autocast,
    scaled_kaiming_init_,
)
from dgggan_pl.models.contract import GeneratorOutput, LRFeatures, Run, apply
from dgggan_pl.models.gradient import GradientMagnitude
from dgggan_pl.models.init_args import records_init_args

GlobalSkip = Literal["none", "bicubic"]
GLOBAL_SKIPS: tuple[str, ...] = get_args(GlobalSkip)


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """Differentiable x`scale` bicubic upsampling `(B, C, h, w)` -> `(B, C, scale*h, scale*w)`, not clamped.

    PyTorch's bicubic (Keys a = -0.75, edge pixels replicated): one fused kernel on every device, exported as
    ONNX Resize(cubic); each output pixel reads 2 LR pixels around it, so tiles with any halo >= 2 stay exact.
    MATLAB's a = -0.5 kernel is only needed where numbers are compared with papers (the bicubic baseline).
    """
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


class SRBranch(nn.Module):
    """One branch: head conv, B EMSRBs, trunk conv with a long skip, x`scale` tail to HR features.

    The generator steps through `blocks` itself, so that it can inject between the two branches.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_blocks: int,
        scale: int,
        use_se: bool,
        se_reduction: int,
        negative_slope: float,
    ) -> None:
        super().__init__()
        self.head = conv3x3(in_channels, channels)
        self.blocks = nn.ModuleList(
            EnhancedMultiScaleResidualBlock(channels, use_se, se_reduction, negative_slope)
            for _ in range(num_blocks)
        )
        self.trunk = conv3x3(channels, channels)
        self.tail = UpsampleTail(channels, scale, negative_slope)

    def long_skip(self, features: Tensor, head_features: Tensor) -> Tensor:
        """Trunk conv + long skip from the head, `(B, C, h, w)` -> `(B, C, h, w)`; the tail follows in `decode`."""
        return self.trunk(features) + head_features


class DGGGANGenerator(nn.Module):
    """x`scale` generator. `forward(lr)`: `(B, 3, h, w)` in [0, 1] -> `GeneratorOutput` at `(B, 3, sh, sw)`.

    Args:
        in_channels: image channels (3).
        channels: width C of both branches (64 parameter-faithful, 32 FLOPs-faithful; docs/models.md).
        num_blocks: EMSRBs per branch.
        injection_blocks: 1-based image-block indices after which G(image features) is added to the
            gradient branch's features at the same depth.
        scale: upscaling factor (power of two).
        use_gradient_branch: False (ablation no_grad) builds no gradient branch at all.
        use_se: False (ablation no_se) builds no SE module.
        se_reduction: SE bottleneck ratio r (C -> C/r).
        negative_slope: LeakyReLU slope.
        init_scale: Kaiming-normal weights of the convs inside the EMSRBs are multiplied by this, so that
            each residual block starts near identity; every other conv keeps PyTorch's default init
            (docs/design.md, "Initialisation").
        global_skip: `none` (the paper) or `bicubic`: add a differentiable bicubic upsampling of the LR input
            to the SR image, so that the network learns a residual (an extension; docs/design.md).
    """

    config: dict[str, Any]  # the constructor's arguments and `_target_` (`records_init_args`)

    @records_init_args
    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        num_blocks: int = 10,
        injection_blocks: Sequence[int] = (3, 6, 9),
        scale: int = 4,
        use_gradient_branch: bool = True,
        use_se: bool = True,
        se_reduction: int = 16,
        negative_slope: float = 0.2,
        init_scale: float = 0.1,
        global_skip: GlobalSkip = "none",
    ) -> None:
        super().__init__()
        injection = tuple(int(i) for i in injection_blocks)
        bad = [i for i in injection if not 1 <= i <= num_blocks]
        if bad:
            raise ValueError(
                f"model.generator.injection_blocks {list(injection)} has indices {bad} outside "
                f"1..num_blocks={num_blocks}"
            )
        if global_skip not in GLOBAL_SKIPS:
            raise ValueError(
                f"model.generator.global_skip must be one of {list(GLOBAL_SKIPS)}, got {global_skip!r}"
            )
        self.global_skip = global_skip
        self.in_channels = in_channels
        self.scale = scale
        self.use_gradient_branch = use_gradient_branch
        self.injection_blocks = frozenset(injection)
        branch_args = (in_channels, channels, num_blocks, scale, use_se, se_reduction, negative_slope)
        self.image_branch = SRBranch(*branch_args)
        if use_gradient_branch:
            self.gradient = GradientMagnitude()
            self.gradient_branch = SRBranch(*branch_args)
            self.gradient_out = conv3x3(channels, in_channels)
            self.fusion = nn.Sequential(
                conv3x3(2 * channels, channels), nn.LeakyReLU(negative_slope, inplace=True)
            )
        self.image_out = conv3x3(channels, in_channels)
        for branch in self.branches:
            for block in branch.blocks:
                scaled_kaiming_init_(block, init_scale)

    @property
    def branches(self) -> list[SRBranch]:
        return [self.image_branch] + ([self.gradient_branch] if self.use_gradient_branch else [])

    def _check_input(self, lr: Tensor) -> None:
        if lr.dim() != 4 or lr.shape[1] != self.in_channels:
            raise ValueError(
                f"DGGGANGenerator expects an LR batch of shape (B, {self.in_channels}, h, w), "
                f"got shape {tuple(lr.shape)}; add a batch dimension with lr.unsqueeze(0) if needed"
            )
        if not lr.is_floating_point():
            raise ValueError(f"DGGGANGenerator expects a float LR tensor in [0, 1], got dtype {lr.dtype}")

    def forward(self, lr: Tensor) -> GeneratorOutput:
        """`(B, 3, h, w)` in [0, 1] -> SR image and SR gradient map, both `(B, 3, scale*h, scale*w)`."""
        return self.decode(self.encode(lr), lr)

    def encode(self, lr: Tensor, run: Run = apply, *, inplace: bool = False) -> LRFeatures:
        """LR stage: `(B, 3, h, w)` -> `LRFeatures`. Every local op goes through `run(fn, *inputs)`.

        What is not local (each SE gate pools its whole map, in `EMSRB.finish`) runs here on the maps
        `run` returned. `inplace=True` (inference only, never with autograd) lets `finish` and the
        injections write into maps that `run` just made, and recomputes each branch's head for its long skip
        instead of holding it: tiled inference then holds `branches + 1` whole maps instead of
        `2 * branches + 1`; the same values (to float rounding: a head is computed on other tiles).
        """
        self._check_input(lr)
        image_head = run(self.image_branch.head, lr)
        grad_head = run(self._gradient_head, lr) if self.use_gradient_branch else None
        image, grad = image_head, grad_head
        if inplace:
            del image_head, grad_head  # the first blocks' inputs only; the long skips recompute them
        blocks = cast(Sequence[EnhancedMultiScaleResidualBlock], self.image_branch.blocks)
        for index, image_block in enumerate(blocks, start=1):
            image = image_block.finish(image, run(image_block.local, image), inplace=inplace)
            if grad is None:
                continue
            grad_block = cast(EnhancedMultiScaleResidualBlock, self.gradient_branch.blocks[index - 1])
            grad = grad_block.finish(grad, run(grad_block.local, grad), inplace=inplace)
            if index in self.injection_blocks:
                guidance = run(self.gradient, image)
                grad = grad.add_(guidance) if inplace else grad + guidance
                del guidance  # a whole map: not kept alive until encode returns
        if inplace:
            image = run(self._image_long_skip, image, lr)
            return LRFeatures(image, None if grad is None else run(self._gradient_long_skip, grad, lr))
        image = run(self.image_branch.long_skip, image, image_head)
        del image_head  # maps are released as soon as they are used up
        if grad is None:
            return LRFeatures(image, None)
        return LRFeatures(image, run(self.gradient_branch.long_skip, grad, grad_head))

    def decode(self, features: LRFeatures, lr: Tensor) -> GeneratorOutput:
        """HR stage, purely local (radius 2 LR pixels): `LRFeatures` and the LR input -> `GeneratorOutput`."""
        image_hr = self.image_branch.tail(features.image)
        if features.gradient is None:
            return GeneratorOutput(self.add_global_skip(outside_autocast(self.image_out, image_hr), lr), None)
        grad_hr = self.gradient_branch.tail(features.gradient)
        sr = outside_autocast(self.image_out, self.fusion(torch.cat([image_hr, grad_hr], dim=1)))
        # the output convs run outside autocast: a bf16 SR image would be a staircase to G(.) (blocks.py)
        return GeneratorOutput(self.add_global_skip(sr, lr), outside_autocast(self.gradient_out, grad_hr))

    def add_global_skip(self, sr: Tensor, lr: Tensor) -> Tensor:
        """`sr` + bicubic(`lr`) with `global_skip: bicubic`; `sr` unchanged with `none`."""
        if self.global_skip == "none":
            return sr
        return sr + bicubic_upsample(lr, self.scale)

    def _gradient_head(self, lr: Tensor) -> Tensor:
        return self.gradient_branch.head(self.gradient(lr))

    def _image_long_skip(self, features: Tensor, lr: Tensor) -> Tensor:
        """The image branch's long skip with its head recomputed from the LR input (`encode(inplace=True)`)."""
        return self.image_branch.long_skip(features, self.image_branch.head(lr))

    def _gradient_long_skip(self, features: Tensor, lr: Tensor) -> Tensor:
        """The gradient branch's long skip with its head recomputed from the LR input (`encode(inplace=True)`)."""
        return self.gradient_branch.long_skip(features, self._gradient_head(lr))

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
    ) -> Any:
        """Kept for code written before the model layer: `SRModel.from_pretrained(path, ...)`, the `SRModel` holding
        this network (`upscale`, `enable_tiling`, `save_pretrained`); a file holding another class is a TypeError.
        The network's one use of the model layer, imported only when called."""
        from dgggan_pl.sr_model import SRModel

        warnings.warn(
            "DGGGANGenerator.from_pretrained is kept for older code; use dgggan_pl.SRModel.from_pretrained",
            FutureWarning,
            stacklevel=2,
        )
        model = SRModel.from_pretrained(path, use_ema=use_ema, map_location=map_location)
        if not isinstance(model.generator, cls):
            raise TypeError(f"{path}: holds a {type(model.generator).__name__}, not a {cls.__name__}")
        return model
