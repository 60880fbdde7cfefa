"""Tiled, seam-free x4 inference: working memory bounded by the tile, plus a few LR maps of the image.

Why not just cut the image into overlapping tiles and run the whole generator on each? Every EMSRB ends in
squeeze-and-excitation, whose gate is a GLOBAL average over the image: a tile would see its own statistics,
so tiles could never match the untiled output (visible seams), whatever the overlap. And the convolutions
alone reach 4 * num_blocks + 5 LR pixels (45 at the default 10 blocks), so a tile of 128 would recompute
more than twice its own area.

Instead the generator's own two stages (`encode` / `decode` of the `SRGenerator` contract, the code of its
forward) are driven here, each tiled with exactly the context it needs; nothing of the architecture is
repeated or reached into:
1. LR stage (`encode_tiled`): `generator.encode(lr, run)` with a `run` that applies each local operation
   (heads, the convolutions of one block, G(.), trunk + long skip) on tiles grown by its own receptive
   radius (4 LR pixels for a block); each SE gate is computed by the generator on the assembled full map,
   as in the untiled forward. Memory: `2 * branches + 1` C-channel LR maps of the whole image (in place
   where the forward would allocate a new one), plus one tile's working set.
2. HR stage: `generator.decode` (x4 tails, fusion, output convs, the optional bicubic global skip, whose
   receptive radius is 2 LR pixels) on LR tiles of `tile` pixels with `overlap` pixels of context on each
   side; only the valid centre of each tile's output is kept (no blending needed). The LR input is an
   input of this stage, so the skip's reach is measured with the rest. This stage dominates compute and
   the per-tile memory (~16x the pixels); its output can be written straight into a uint8 buffer.
Radii are measured on the actual modules (`receptive_radius`); the number of tile steps, the feature maps'
channels and the widest LR-stage op are read from a dry run of `encode` on a 1x1 input, not hard-coded.
`DGGGANGenerator.enable_tiling` + `upscale` is the user-facing form (`super_resolve` below).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor

from dgggan_pl.data.io import quantize_uint8, to_float
from dgggan_pl.models.contract import LRFeatures, Run, SRGenerator, apply

# LR pixels per HR-stage tile of `upscale` (CLI and model default): 1.3 GiB peak RSS at C = 64, and fewer, larger
# ops than 64 (which is a little faster on one thread but thread-bound on a busy 2-core box); docs/inference.md.
DEFAULT_TILE = 128
LR_STAGE_TILE_FACTOR = 2  # LR-stage tiles are this many times wider: ~13C channels/pixel vs ~96C at HR
_PROBE_SIZE = 17  # first probe (LR pixels) when measuring a receptive radius; doubled until it fits

ProgressFn = Callable[[int, int], None]
TileFn = Callable[..., Tensor]


def encode_tiled(
    generator: SRGenerator,
    lr: Tensor,
    tile: int,
    progress: Callable[[], None] | None = None,
    *,
    inplace: bool = True,
) -> LRFeatures:
    """`generator.encode` with each local op on `tile`-pixel tiles grown by its measured halo.

    Same result as `generator.encode(lr)`; the maps stay on `lr`'s device, tiles run on the generator's.
    `inplace=False` keeps every intermediate map (one more C-channel map per branch; for comparisons).
    """
    device = next(generator.parameters()).device

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        halo = receptive_radius(fn, inputs, device)
        return map_tiles(fn, inputs, tile=tile, halo=halo, device=device, progress=progress)

    return generator.encode(lr, run, inplace=inplace)


def decode_tiled(
    generator: SRGenerator,
    features: LRFeatures,
    lr: Tensor,
    tile: int,
    overlap: int,
    progress: Callable[[], None] | None = None,
    *,
    to_uint8: bool = False,
) -> Tensor:
    """`generator.decode(features, lr).sr` on LR tiles of `tile` pixels with `overlap` pixels of context.

    Float `(B, 3, sh, sw)` on `lr`'s device, or with `to_uint8` a uint8 image (`uint8_image_buffer`), each
    tile rounded as `save_image` rounds, so that no float HR image is ever held.
    """
    out = None
    if to_uint8:
        height, width = (generator.scale * n for n in lr.shape[-2:])
        out = uint8_image_buffer(lr.shape[0], height, width, lr.shape[1])
    return map_tiles(
        _decode_sr(generator, features),
        _decode_inputs(features, lr),
        tile=tile,
        halo=overlap,
        device=next(generator.parameters()).device,
        scale=generator.scale,
        progress=progress,
        out=out,
        convert=quantize_uint8 if to_uint8 else None,
    )


def count_local_ops(generator: SRGenerator) -> int:
    """How many local ops `generator.encode` passes to its `run` (counted on a 1x1 dry run)."""
    calls = 0

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return fn(*inputs)

    dry_encode(generator, run)
    return calls


def dry_encode(generator: SRGenerator, run: Run = apply) -> LRFeatures:
    """`generator.encode` on a 1x1 input: the LR features' layout (maps, channels) and every op passed to `run`."""
    device = next(generator.parameters()).device
    with torch.no_grad():
        return generator.encode(torch.zeros(1, generator.in_channels, 1, 1, device=device), run, inplace=True)


def lr_stage_radius(generator: SRGenerator) -> int:
    """The widest receptive radius (LR pixels) among the local ops of `encode` (an EMSRB's: 4).

    Ops of the same function on modules of the same structure (equal `repr`, e.g. the 20 EMSRBs) and channel
    counts are measured once: a radius depends on the architecture, not on the weights.
    """
    device = next(generator.parameters()).device
    radii: dict[tuple, int] = {}

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        owner = getattr(fn, "__self__", fn)
        key = (getattr(fn, "__func__", fn), repr(owner), tuple(x.shape[1] for x in inputs))
        if key not in radii:
            radii[key] = receptive_radius(fn, inputs, device)
        return fn(*inputs)

    dry_encode(generator, run)
    return max(radii.values(), default=0)


def _decode_inputs(features: LRFeatures, lr: Tensor) -> list[Tensor]:
    return [*(f for f in features if f is not None), lr]


def _decode_sr(generator: SRGenerator, features: LRFeatures) -> TileFn:
    """`generator.decode` as a tile function of `_decode_inputs(features, lr)` (maps..., lr) -> SR image."""
    if features.gradient is not None:
        return lambda image, gradient, lr: generator.decode(LRFeatures(image, gradient), lr).sr
    return lambda image, lr: generator.decode(LRFeatures(image, None), lr).sr


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
        reach = cast(Tensor, sum(g.abs().sum(dim=(0, 1)) for g in grads if g is not None)) != 0
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
    out: Tensor | None = None,
    convert: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Apply a local op to `tile` x `tile` pieces of `inputs` (`(B, C_i, h, w)`) grown by `halo` pixels.

    Returns `(B, C', scale*h, scale*w)`, equal to `fn(*inputs)` whenever `halo` is at least `fn`'s receptive
    radius: each piece contributes only its centre, which saw all the context it needs (image borders are
    padded the same way as untiled). Pieces are computed on `device`, so its memory holds one grown tile of
    `fn`'s activations, whatever the image size. The result is written into `out` when given (any dtype,
    device or strides; each centre passes through `convert` first), else into a new tensor on the inputs'
    device and dtype, in the memory format `fn` returns (channels_last in, channels_last out).
    """
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got tile={tile}, halo={halo}")
    height, width = inputs[0].shape[-2:]
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(bottom + halo, height), min(right + halo, width)
            piece = fn(*(x[..., y0:y1, x0:x1].to(device) for x in inputs))
            centre = piece[
                ..., scale * (top - y0) : scale * (bottom - y0), scale * (left - x0) : scale * (right - x0)
            ]
            if out is None:
                out = _new_output(piece, inputs[0], (scale * height, scale * width))
            out[..., scale * top : scale * bottom, scale * left : scale * right] = (
                centre if convert is None else convert(centre)
            )
            if progress is not None:
                progress()
    assert out is not None  # height, width >= 1
    return out


def _new_output(piece: Tensor, like: Tensor, size: tuple[int, int]) -> Tensor:
    channels_last = (
        piece.dim() == 4
        and not piece.is_contiguous()
        and piece.is_contiguous(memory_format=torch.channels_last)
    )
    return torch.empty(
        (piece.shape[0], piece.shape[1], *size),
        dtype=like.dtype,
        device=like.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )


def uint8_image_buffer(batch: int, height: int, width: int, channels: int = 3) -> Tensor:
    """A `(B, C, H, W)` uint8 view of `(B, H, W, C)` memory: what image writers take without a copy."""
    return torch.empty(batch, height, width, channels, dtype=torch.uint8).permute(0, 3, 1, 2)


def count_tile_steps(generator: SRGenerator, height: int, width: int, tile: int) -> int:
    """How many times `upscale_tiled` calls its progress callback for an `height` x `width` LR image."""
    lr_tile = LR_STAGE_TILE_FACTOR * tile
    lr_tiles = math.ceil(height / lr_tile) * math.ceil(width / lr_tile)
    hr_tiles = math.ceil(height / tile) * math.ceil(width / tile)
    return count_local_ops(generator) * lr_tiles + hr_tiles


class MemoryEstimate(NamedTuple):
    """Bytes `upscale_tiled(..., to_uint8=True)` allocates beyond the loaded model, by stage and place.

    `lr_stage`: peak of the whole-image LR maps during the LR stage (on `lr`'s device); `hr_stage`: the LR
    maps the HR stage reads; `output`: the uint8 SR image (allocated after the LR stage); `tile`: one
    tile's activations on the generator's device, the larger of the two stages'; `gate_map`: the one
    whole C-channel map each SE gate pools on the generator's device.
    """

    lr_stage: int
    hr_stage: int
    output: int
    tile: int
    gate_map: int

    @property
    def peak(self) -> int:
        """Peak when everything lives on one device (the CPU case)."""
        return max(self.lr_stage, self.hr_stage + self.output) + self.tile


# Peak activations of one tile op, in floats per (pixel x channel C) of the grown tile, measured as the peak
# RSS growth of one op at C = 16 and 64, tiles 64-128: an EMSRB's `local` 14-18 (LR pixels), the HR stage
# 7-8 (HR pixels). Rounded up; they are estimates, the maps and the output are exact.
LR_TILE_FLOATS_PER_CHANNEL = 18
HR_TILE_FLOATS_PER_CHANNEL = 8


def estimate_memory(
    generator: SRGenerator, height: int, width: int, tile: int, overlap: int | None = None
) -> MemoryEstimate:
    """What upscaling one `height` x `width` LR image costs (`tile` 0: the whole image as one tile).

    The LR stage holds the LR input and `2 * branches + 1` C-channel maps of the whole image (each branch's
    head and current features, and the map being tiled), the HR stage the final LR features and the LR input.
    """
    features = dry_encode(generator)
    channels = features.image.shape[1]
    branches = sum(f is not None for f in features)
    map_bytes = height * width * next(generator.parameters()).element_size()
    lr_input = generator.in_channels * map_bytes
    output = generator.in_channels * generator.scale**2 * height * width
    lr_side, hr_side = (height, width), (height, width)
    if tile > 0:
        halo = hr_stage_radius(generator) if overlap is None else overlap
        reach = max(lr_stage_radius(generator), halo)
        lr_tile = LR_STAGE_TILE_FACTOR * tile
        lr_side = (min(lr_tile, height) + 2 * reach, min(lr_tile, width) + 2 * reach)
        hr_side = (min(tile, height) + 2 * halo, min(tile, width) + 2 * halo)
    lr_floats = LR_TILE_FLOATS_PER_CHANNEL * lr_side[0] * lr_side[1]
    hr_floats = HR_TILE_FLOATS_PER_CHANNEL * generator.scale**2 * hr_side[0] * hr_side[1]
    return MemoryEstimate(
        lr_stage=lr_input + (2 * branches + 1) * channels * map_bytes,
        hr_stage=lr_input + branches * channels * map_bytes,
        output=output,
        tile=max(lr_floats, hr_floats) * channels * next(generator.parameters()).element_size(),
        gate_map=channels * map_bytes,
    )


def hr_stage_radius(generator: SRGenerator) -> int:
    """Receptive radius (LR pixels) of the HR stage: the smallest `overlap` that makes tiles seam-free."""
    features = dry_encode(generator)  # 1x1 maps: the probes only take their channel counts
    inputs = _decode_inputs(features, torch.empty(1, generator.in_channels, 1, 1))
    device = next(generator.parameters()).device
    return receptive_radius(_decode_sr(generator, features), inputs, device, scale=generator.scale)


@torch.inference_mode()
def upscale_tiled(
    generator: SRGenerator,
    lr: Tensor,
    tile: int,
    overlap: int | None = None,
    *,
    progress: ProgressFn | None = None,
    to_uint8: bool = False,
) -> Tensor:
    """x`scale` SR of `lr` `(B, 3, h, w)` in [0, 1] -> `(B, 3, scale*h, scale*w)`, tile by tile.

    `tile`: LR pixels per HR-stage tile (the LR stage uses `LR_STAGE_TILE_FACTOR` times wider tiles).
    `overlap`: LR pixels of context around each HR-stage tile; None = `hr_stage_radius(generator)`, the
    smallest seam-free value. Smaller values are allowed (faster) but warned about: seams may show.
    `progress(done, total)` is called after every tile. Returns the SR image on `lr`'s device: float (not
    clamped), or with `to_uint8` each tile rounded as `save_image` does straight into a uint8 buffer
    (`uint8_image_buffer`, allocated after the LR stage), so no float HR image ever exists. Memory:
    `estimate_memory`.
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
    return decode_tiled(generator, features, lr, tile, overlap, step, to_uint8=to_uint8)


def super_resolve(
    generator: SRGenerator,
    image: Tensor,
    tile: int,
    overlap: int | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Tensor:
    """x`scale` SR of one image `(3, h, w)` or a batch `(B, 3, h, w)`; `tile` 0 runs it whole, else tiled.

    uint8 in -> uint8 out, rounded as `save_image` rounds (tiled: each tile straight into the uint8 image, no
    float HR image is held); float in [0, 1] -> float, not clamped. The input follows the generator's memory
    format (channels_last weights, channels_last input). The one implementation behind `upscale` (the CLI)
    and `DGGGANGenerator.upscale`.
    """
    lr = image if image.dim() == 4 else image.unsqueeze(0)
    to_uint8 = lr.dtype == torch.uint8
    lr = to_float(lr) if to_uint8 else lr
    weight = next(generator.parameters())
    if weight.is_contiguous(memory_format=torch.channels_last):
        lr = lr.contiguous(memory_format=torch.channels_last)
    if tile > 0:
        sr = upscale_tiled(generator, lr, tile, overlap, progress=progress, to_uint8=to_uint8)
    else:
        with torch.inference_mode():
            sr = generator(lr.to(weight.device)).sr.to(lr.device)
        sr = quantize_uint8(sr) if to_uint8 else sr
    return sr if image.dim() == 4 else sr[0]
