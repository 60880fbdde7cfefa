"""Tiled, seam-free x4 inference: working memory bounded by the tile, plus a few LR maps of the image.

Why not just cut the image into overlapping tiles and run the whole generator on each? Every EMSRB ends in
squeeze-and-excitation, whose gate is a GLOBAL average over the image: a tile would see its own statistics,
so tiles could never match the untiled output (visible seams), whatever the overlap. And the convolutions
alone reach 4 * num_blocks + 5 LR pixels (45 at the default 10 blocks), so a tile of 128 would recompute
more than twice its own area.

Instead the generator is run in two stages, each tiled with exactly the context it needs:
1. LR stage (`encode_tiled`): layer by layer over the whole LR image. Each local operation (heads, the
   convolutions of one block, G(.), trunk) runs on tiles grown by its own receptive radius (4 LR pixels
   for a block); each SE gate is computed on the assembled full map, as in the untiled forward. Memory:
   a few C-channel LR maps of the whole image, plus one tile's working set.
2. HR stage (`decode`): the x4 tails, fusion and output convs, whose receptive radius is 2 LR pixels,
   run on LR tiles of `tile` pixels with `overlap` pixels of context on each side; only the valid centre
   of each tile's output is kept (no blending needed). This stage dominates memory (~16x the pixels).
Radii are measured on the actual modules (`receptive_radius`), not hard-coded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from dgggan_pl.models.generator import DGGGANGenerator, GeneratorOutput

LR_STAGE_TILE_FACTOR = 2  # LR-stage tiles are this many times wider: ~13C channels/pixel vs ~96C at HR
_PROBE_SIZE = 17  # first probe (LR pixels) when measuring a receptive radius; doubled until it fits

ProgressFn = Callable[[int, int], None]
TileFn = Callable[..., Tensor]


class LRFeatures(NamedTuple):
    """The generator's LR-resolution state just before its x4 tails: `(B, C, h, w)` each (trunk + long skip)."""

    image: Tensor
    gradient: Tensor | None


def _check_lr(generator: DGGGANGenerator, lr: Tensor) -> None:
    if lr.dim() != 4 or lr.shape[1] != generator.in_channels or not lr.is_floating_point():
        raise ValueError(
            f"expected a float LR batch (B, {generator.in_channels}, h, w) in [0, 1], "
            f"got {tuple(lr.shape)} {lr.dtype}"
        )


def _block_local(block: torch.nn.Module, x: Tensor) -> Tensor:
    """An EMSRB without its SE gate and residual add: the purely local part (mirrors its `forward`)."""
    s1 = torch.cat([block.act(block.stage1_3x3(x)), block.act(block.stage1_5x5(x))], dim=1)
    s2 = torch.cat([block.act(block.stage2_3x3(s1)), block.act(block.stage2_5x5(s1))], dim=1)
    return block.fuse(torch.cat([s1, s2], dim=1))


def _block_finish(block: torch.nn.Module, x: Tensor, local: Tensor) -> Tensor:
    """SE over the WHOLE map (global pooling) and the residual add: the non-local part of an EMSRB.

    Runs on the block's device; the result stays on `x`'s (storage) device and dtype.
    """
    if block.se is None:
        return x + local
    device = next(block.parameters()).device
    return x + block.se(local.to(device)).to(x.device, x.dtype)


def _trunk_skip(branch: torch.nn.Module) -> TileFn:
    return lambda features, head: branch.trunk(features) + head


def encode(generator: DGGGANGenerator, lr: Tensor) -> LRFeatures:
    """Untiled LR stage: `(B, 3, h, w)` in [0, 1] -> `LRFeatures`, exactly as the generator's forward."""
    return _encode(generator, lr, lambda fn, *inputs: fn(*inputs))


def encode_tiled(
    generator: DGGGANGenerator, lr: Tensor, tile: int, progress: Callable[[], None] | None = None
) -> LRFeatures:
    """LR stage op by op, each local op on `tile`-pixel tiles with its measured halo; same result as `encode`."""

    device = next(generator.parameters()).device

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        halo = receptive_radius(fn, inputs, device)
        return map_tiles(fn, inputs, tile=tile, halo=halo, device=device, progress=progress)

    return _encode(generator, lr, run)


def _encode(generator: DGGGANGenerator, lr: Tensor, run: Callable[..., Tensor]) -> LRFeatures:
    """The generator's LR stage with every local op passed through `run(fn, *inputs)` (direct or tiled)."""
    _check_lr(generator, lr)
    image_branch = generator.image_branch
    image_head = run(image_branch.head, lr)
    image = image_head
    if not generator.use_gradient_branch:
        for block in image_branch.blocks:
            image = _block_finish(block, image, run(lambda x, b=block: _block_local(b, x), image))
        return LRFeatures(run(_trunk_skip(image_branch), image, image_head), None)

    grad_branch = generator.gradient_branch
    grad_head = run(lambda x: grad_branch.head(generator.gradient(x)), lr)
    grad = grad_head
    blocks = zip(image_branch.blocks, grad_branch.blocks, strict=True)
    for index, (image_block, grad_block) in enumerate(blocks, start=1):
        image = _block_finish(image_block, image, run(lambda x, b=image_block: _block_local(b, x), image))
        grad = _block_finish(grad_block, grad, run(lambda x, b=grad_block: _block_local(b, x), grad))
        if index in generator.injection_blocks:
            grad = grad + run(generator.gradient, image)
    return LRFeatures(
        run(_trunk_skip(image_branch), image, image_head), run(_trunk_skip(grad_branch), grad, grad_head)
    )


def decode(generator: DGGGANGenerator, features: LRFeatures) -> GeneratorOutput:
    """HR stage: `LRFeatures` `(B, C, h, w)` -> `GeneratorOutput` at `(B, 3, 4h, 4w)`; purely local."""
    image_hr = generator.image_branch.tail(features.image)
    if features.gradient is None:
        return GeneratorOutput(generator.image_out(image_hr), None)
    grad_hr = generator.gradient_branch.tail(features.gradient)
    sr = generator.image_out(generator.fusion(torch.cat([image_hr, grad_hr], dim=1)))
    return GeneratorOutput(sr, generator.gradient_out(grad_hr))


def _decode_sr(generator: DGGGANGenerator) -> TileFn:
    return lambda image, gradient=None: decode(generator, LRFeatures(image, gradient)).sr


def receptive_radius(fn: TileFn, inputs: Sequence[Tensor], device: torch.device, scale: int = 1) -> int:
    """How many LR pixels of context one output pixel of `fn` needs, measured by back-propagation.

    `fn` maps `(1, C_i, n, n)` tensors shaped like `inputs` to `(1, C', scale*n, scale*n)`. The gradient of
    the outputs of the centre LR pixel w.r.t. random inputs is non-zero exactly on its receptive field
    (global ops such as SE must be left out of `fn`, they would make it the whole probe). Probes are float32
    on `device` (where `fn`'s weights live); only the channel counts of `inputs` are used.
    """
    size = _PROBE_SIZE
    while True:
        centre = size // 2
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            probes = [
                torch.randn(1, x.shape[1], size, size, device=device, requires_grad=True) for x in inputs
            ]
            out = fn(*probes)
            window = out[..., centre * scale : (centre + 1) * scale, centre * scale : (centre + 1) * scale]
            grads = torch.autograd.grad(window.sum(), probes, allow_unused=True)
        reach = sum(g.abs().sum(dim=(0, 1)) for g in grads if g is not None) != 0
        rows, cols = reach.nonzero(as_tuple=True)
        radius = int(max((rows - centre).abs().max(), (cols - centre).abs().max()))
        if radius < centre:
            return radius
        size = 2 * size + 1


def map_tiles(
    fn: TileFn,
    inputs: Sequence[Tensor],
    *,
    tile: int,
    halo: int,
    device: torch.device,
    scale: int = 1,
    progress: Callable[[], None] | None = None,
) -> Tensor:
    """Apply a local op to `tile` x `tile` pieces of `inputs` (`(B, C_i, h, w)`) grown by `halo` pixels.

    Returns `(B, C', scale*h, scale*w)` on the inputs' device and dtype, equal to `fn(*inputs)` whenever
    `halo` is at least `fn`'s receptive radius: each piece contributes only its centre, which saw all the
    context it needs (image borders are padded the same way as untiled). Pieces are computed on `device`,
    so GPU memory holds one grown tile of `fn`'s activations, whatever the image size.
    """
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got tile={tile}, halo={halo}")
    height, width = inputs[0].shape[-2:]
    output: Tensor | None = None
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(bottom + halo, height), min(right + halo, width)
            piece = fn(*(x[..., y0:y1, x0:x1].to(device) for x in inputs))
            if output is None:
                shape = (piece.shape[0], piece.shape[1], scale * height, scale * width)
                output = inputs[0].new_empty(shape)
            output[..., scale * top : scale * bottom, scale * left : scale * right] = piece[
                ..., scale * (top - y0) : scale * (bottom - y0), scale * (left - x0) : scale * (right - x0)
            ]
            if progress is not None:
                progress()
    assert output is not None  # height, width >= 1
    return output


def count_tile_steps(generator: DGGGANGenerator, height: int, width: int, tile: int) -> int:
    """How many times `upscale_tiled` calls its progress callback for an `height` x `width` LR image."""
    lr_tile = LR_STAGE_TILE_FACTOR * tile
    lr_tiles = math.ceil(height / lr_tile) * math.ceil(width / lr_tile)
    hr_tiles = math.ceil(height / tile) * math.ceil(width / tile)
    num_blocks = len(generator.image_branch.blocks)
    if generator.use_gradient_branch:
        lr_ops = 2 + 2 * num_blocks + len(generator.injection_blocks) + 2  # heads, blocks, G(.), trunks
    else:
        lr_ops = 1 + num_blocks + 1
    return lr_ops * lr_tiles + hr_tiles


def hr_stage_radius(generator: DGGGANGenerator) -> int:
    """Receptive radius (LR pixels) of the HR stage: the smallest `overlap` that makes tiles seam-free."""
    channels = generator.image_branch.trunk.out_channels
    probe = torch.empty(1, channels, 1, 1)
    inputs = [probe, probe] if generator.use_gradient_branch else [probe]
    device = next(generator.parameters()).device
    return receptive_radius(_decode_sr(generator), inputs, device, scale=generator.scale)


@torch.inference_mode()
def upscale_tiled(
    generator: DGGGANGenerator,
    lr: Tensor,
    tile: int,
    overlap: int | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Tensor:
    """x`scale` SR of `lr` `(B, 3, h, w)` in [0, 1] -> `(B, 3, scale*h, scale*w)` float, tile by tile.

    `tile`: LR pixels per HR-stage tile (the LR stage uses `LR_STAGE_TILE_FACTOR` times wider tiles).
    `overlap`: LR pixels of context around each HR-stage tile; None = `hr_stage_radius(generator)`, the
    smallest seam-free value. Smaller values are allowed (faster) but warned about: seams may show.
    `progress(done, total)` is called after every tile. Returns the SR image on `lr`'s device.
    """
    if any(p.is_inference() for p in generator.parameters()):
        raise ValueError(
            "the generator's weights were created inside torch.inference_mode(), so its receptive radii cannot be "
            "measured by back-propagation; build or load it outside inference_mode (torch.no_grad() is fine)"
        )
    radius = hr_stage_radius(generator)
    overlap = radius if overlap is None else overlap
    if overlap < radius:
        warnings.warn(
            f"tile overlap {overlap} < the HR stage's receptive radius {radius} LR pixels: tiles may show seams",
            stacklevel=3,  # past the inference_mode wrapper, to the caller
        )
    total = count_tile_steps(generator, lr.shape[-2], lr.shape[-1], tile)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    features = encode_tiled(generator, lr, LR_STAGE_TILE_FACTOR * tile, step)
    inputs = [f for f in features if f is not None]
    device = next(generator.parameters()).device
    return map_tiles(
        _decode_sr(generator),
        inputs,
        tile=tile,
        halo=overlap,
        device=device,
        scale=generator.scale,
        progress=step,
    )
