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
   as in the untiled forward. Memory: `branches + 1` C-channel LR maps of the whole image (in place where
   the forward would allocate a new one; each head is recomputed for its long skip rather than held), plus
   one tile's working set.
2. HR stage: `generator.decode` (x4 tails, fusion, output convs, the optional bicubic global skip, whose
   receptive radius is 2 LR pixels) on LR tiles of `tile` pixels with `overlap` pixels of context on each
   side; only the valid centre of each tile's output is kept (no blending needed). The LR input is an
   input of this stage, so the skip's reach is measured with the rest. This stage dominates compute and
   the per-tile memory (~16x the pixels); its output can be written straight into a uint8 buffer.
Radii are measured on the actual modules (`dgggan_pl.probes.receptive_radius`); the number of tile steps, the
feature maps' channels and the widest LR-stage op are read from a dry run of `encode` on a 1x1 input, not
hard-coded. This is the `staged` plan, for any generator with the two stages.

A generator without them (ESRGAN's RRDBNet, `model=rrdbnet`) is tiled the plain way, exactly too (`overlap`
plan): whole forwards on tiles grown by its measured receptive radius (`forward_radius`), each tile's centre kept.
A generator whose reach cannot be bounded within the probes' budget (a global op) or that says
`whole_image_only` (peers, `dgggan_pl.peers`) runs on the whole image (`whole` plan, with the reason).
`SRModel.enable_tiling` + `upscale` is the user-facing form (`super_resolve` below); `plan_tiling` picks the plan.
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from dgggan_pl.data.io import quantize_uint8, to_float
from dgggan_pl.models.contract import LRFeatures, Run, SRGenerator, apply, generator_output
from dgggan_pl.probes import (
    UnboundedReach,
    forward_bytes_per_pixel,
    in_channels_of,
    probe_side,
    receptive_radius,
    scale_of,
)

# LR pixels per HR-stage tile of `upscale` (CLI and model default): 1.3 GiB peak RSS at C = 64, and fewer, larger
# ops than 64 (which is a little faster on one thread but thread-bound on a busy 2-core box); docs/inference.md.
DEFAULT_TILE = 128
LR_STAGE_TILE_FACTOR = 2  # LR-stage tiles are this many times wider: ~13C channels/pixel vs ~96C at HR

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
    weight = _weight(generator)

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        halo = receptive_radius(fn, inputs, weight.device, dtype=weight.dtype)
        return map_tiles(fn, inputs, tile=tile, halo=halo, device=weight.device, progress=progress)

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
        height, width = (scale_of(generator) * n for n in lr.shape[-2:])
        out = uint8_image_buffer(lr.shape[0], height, width, lr.shape[1])
    return map_tiles(
        _decode_sr(generator, features),
        _decode_inputs(features, lr),
        tile=tile,
        halo=overlap,
        device=_weight(generator).device,
        scale=scale_of(generator),
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
    weight = _weight(generator)
    with torch.no_grad():
        lr = torch.zeros(1, in_channels_of(generator), 1, 1, device=weight.device, dtype=weight.dtype)
        return generator.encode(lr, run, inplace=True)


class LRMaps(NamedTuple):
    """Channels of the whole-image LR maps `encode_tiled` holds: at its peak (all alive at once, the one being
    tiled included), of the features it returns, and of the widest map (what one SE gate pools)."""

    peak: int
    features: int
    widest: int


def lr_stage_maps(generator: SRGenerator) -> LRMaps:
    """Counted on a dry `encode` (in place, as `encode_tiled` runs it): every map `run` returns is tracked until
    it is freed, so the count follows the generator's own code, not a formula."""
    live: dict[int, int] = {}  # a number per map `run` made -> its channels, while the map is alive
    made = itertools.count()
    peak = widest = 0

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        nonlocal peak, widest
        out = fn(*inputs)
        key = next(made)
        live[key] = out.shape[1]
        weakref.finalize(out, live.pop, key, None)
        peak, widest = max(peak, sum(live.values())), max(widest, out.shape[1])
        return out

    features = dry_encode(generator, run)
    return LRMaps(peak, sum(f.shape[1] for f in features if f is not None), widest)


def lr_stage_radius(generator: SRGenerator) -> int:
    """The widest receptive radius (LR pixels) among the local ops of `encode` (an EMSRB's: 4).

    Ops of the same function on modules of the same structure (equal `repr`, e.g. the 20 EMSRBs) and channel
    counts are measured once: a radius depends on the architecture, not on the weights.
    """
    weight = _weight(generator)
    radii: dict[tuple, int] = {}

    def run(fn: TileFn, *inputs: Tensor) -> Tensor:
        owner = getattr(fn, "__self__", fn)
        key = (getattr(fn, "__func__", fn), repr(owner), tuple(x.shape[1] for x in inputs))
        if key not in radii:
            radii[key] = receptive_radius(fn, inputs, weight.device, dtype=weight.dtype)
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
    """How many times `upscale_tiled` calls its progress callback for an `height` x `width` LR image (staged)."""
    lr_tile = LR_STAGE_TILE_FACTOR * tile
    lr_tiles = math.ceil(height / lr_tile) * math.ceil(width / lr_tile)
    return count_local_ops(generator) * lr_tiles + _tile_count(height, width, tile)


def _tile_count(height: int, width: int, tile: int) -> int:
    return math.ceil(height / tile) * math.ceil(width / tile)


class TilingPlan(NamedTuple):
    """How `super_resolve` runs a generator. `mode`: `whole` (one forward), `staged` (its two stages, each tiled:
    `upscale_tiled`) or `overlap` (whole forwards on `tile`-pixel tiles grown by `overlap` LR pixels). `overlap` is
    the HR stage's context (staged) or the whole forward's (overlap); `note` says why a tiled request runs whole."""

    mode: Literal["whole", "staged", "overlap"]
    tile: int = 0
    overlap: int = 0
    note: str | None = None


# Measured once per generator object, device and dtype (a radius or a working set depends on the architecture,
# not on the weights): `upscale` plans every image of a folder with them.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, TilingPlan]] = weakref.WeakKeyDictionary()
_BYTES_PER_PIXEL: weakref.WeakKeyDictionary[nn.Module, dict[tuple, float]] = weakref.WeakKeyDictionary()


def _weight(generator: SRGenerator) -> Tensor:
    """The first parameter: tiles and probes run on its device and dtype, in its memory format."""
    return next(generator.parameters())


def _measured_key(generator: SRGenerator, *extra: object) -> tuple:
    weight = _weight(generator)
    return (weight.device, weight.dtype, *extra)


def _check_measurable(generator: SRGenerator) -> None:
    if any(p.is_inference() for p in generator.parameters()):
        raise ValueError(
            "the generator's weights were created inside torch.inference_mode(), so its receptive radii cannot be "
            "measured by back-propagation; build or load it outside inference_mode (torch.no_grad() is fine)"
        )


def forward_radius(generator: SRGenerator) -> int:
    """Receptive radius (LR pixels) of the whole forward: the smallest seam-free overlap of the `overlap` plan.
    Raises `probes.UnboundedReach` when a global op (or a very deep net) makes it exceed the probes' budget."""
    weight = _weight(generator)
    probe = [torch.empty(1, in_channels_of(generator), 1, 1)]
    return receptive_radius(
        _sr_of(generator), probe, weight.device, scale=scale_of(generator), dtype=weight.dtype
    )


def _sr_of(generator: SRGenerator) -> TileFn:
    """The whole forward as a tile function: LR -> SR image (a bare tensor or `GeneratorOutput.sr`)."""
    return lambda lr: generator_output(generator(lr)).sr


def plan_tiling(generator: SRGenerator, tile: int, overlap: int | None = None) -> TilingPlan:
    """The plan for `tile` LR pixels per tile (0: whole image) and `overlap` (None: the measured seam-free
    minimum; a smaller one is allowed but warned about: seams may show). Cached per generator, device, dtype."""
    if tile < 0 or (overlap is not None and overlap < 0):
        raise ValueError(
            f"tiling needs tile >= 0 and overlap >= 0 (or None), got tile={tile}, overlap={overlap}"
        )
    if tile == 0:
        return TilingPlan("whole")
    if getattr(generator, "whole_image_only", False):
        return TilingPlan("whole", note="it runs on the whole image only")
    _check_measurable(generator)
    plans = _PLANS.setdefault(generator, {})  # type: ignore[arg-type]
    key = _measured_key(generator, tile, overlap)
    if key not in plans:
        staged = isinstance(
            generator, SRGenerator
        )  # the contract's two stages (structurally: encode, decode)
        try:
            radius = hr_stage_radius(generator) if staged else forward_radius(generator)
        except UnboundedReach as error:
            plans[key] = TilingPlan("whole", note=f"not tiled exactly ({error})")
            return plans[key]
        if overlap is not None and overlap < radius:
            warnings.warn(
                f"tile overlap {overlap} < the receptive radius {radius} LR pixels: tiles may show seams",
                stacklevel=2,
            )
        plans[key] = TilingPlan(
            "staged" if staged else "overlap", tile, radius if overlap is None else overlap
        )
    return plans[key]


class MemoryEstimate(NamedTuple):
    """Bytes `super_resolve` of a uint8 image allocates beyond the loaded model, by stage and place.

    `lr_stage`: peak of the whole-image LR maps during the LR stage (on `lr`'s device); `hr_stage`: the LR
    maps the HR stage reads; `output`: the uint8 SR image (allocated after the LR stage); `tile`: one
    tile's activations on the generator's device, the larger of the two stages' (the whole image's forward
    when untiled); `gate_map`: the one whole C-channel map each SE gate pools on the generator's device.
    Generators without stages hold only the LR input in the two stage fields.
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


def activation_bytes(generator: SRGenerator, height: int, width: int) -> int:
    """Peak working memory of one forward on a `height` x `width` input: the generator's own estimate when it
    brings one (the contract's optional `activation_bytes(height, width)`), else measured on a probe."""
    own = getattr(generator, "activation_bytes", None)
    if callable(own):
        return int(own(height, width))
    measured = _BYTES_PER_PIXEL.setdefault(generator, {})  # type: ignore[arg-type]
    key = _measured_key(generator)
    if key not in measured:
        weight = _weight(generator)
        measured[key] = forward_bytes_per_pixel(
            _sr_of(generator), in_channels_of(generator), probe_side(), weight.device, weight.dtype
        )
    return math.ceil(measured[key] * height * width)


def estimate_memory(
    generator: SRGenerator, height: int, width: int, tile: int, overlap: int | None = None
) -> MemoryEstimate:
    """What upscaling one `height` x `width` LR image costs (`tile` 0: the whole image as one tile).

    Staged: the LR stage holds the LR input and the whole-image maps counted by `lr_stage_maps` (DGGGAN: each
    branch's current features and the map being tiled, `branches + 1` C-channel maps), the HR stage the final LR
    features and the LR input. Otherwise one forward's working set on the (grown) tile or the whole image
    (`activation_bytes`).
    """
    plan = plan_tiling(generator, tile, overlap)
    element = _weight(generator).element_size()
    lr_input = in_channels_of(generator) * height * width * element
    output = in_channels_of(generator) * scale_of(generator) ** 2 * height * width
    if plan.mode != "staged":
        side = (height, width) if plan.mode == "whole" else _grown(plan.tile, plan.overlap, height, width)
        working = activation_bytes(generator, *side)
        return MemoryEstimate(lr_input, lr_input, output, working, 0)
    maps = lr_stage_maps(generator)
    map_bytes = height * width * element
    reach = max(lr_stage_radius(generator), plan.overlap)
    lr_side = _grown(LR_STAGE_TILE_FACTOR * plan.tile, reach, height, width)
    hr_side = _grown(plan.tile, plan.overlap, height, width)
    lr_floats = LR_TILE_FLOATS_PER_CHANNEL * lr_side[0] * lr_side[1]
    hr_floats = HR_TILE_FLOATS_PER_CHANNEL * scale_of(generator) ** 2 * hr_side[0] * hr_side[1]
    return MemoryEstimate(
        lr_stage=lr_input + maps.peak * map_bytes,
        hr_stage=lr_input + maps.features * map_bytes,
        output=output,
        tile=max(lr_floats, hr_floats) * maps.widest * element,
        gate_map=maps.widest * map_bytes,
    )


def _grown(tile: int, halo: int, height: int, width: int) -> tuple[int, int]:
    """The side of the largest tile grown by `halo`: what one tile op holds."""
    return min(tile, height) + 2 * halo, min(tile, width) + 2 * halo


def hr_stage_radius(generator: SRGenerator) -> int:
    """Receptive radius (LR pixels) of the HR stage: the smallest `overlap` that makes staged tiles seam-free."""
    features = dry_encode(generator)  # 1x1 maps: the probes only take their channel counts
    inputs = _decode_inputs(features, torch.empty(1, in_channels_of(generator), 1, 1))
    weight = _weight(generator)
    return receptive_radius(
        _decode_sr(generator, features), inputs, weight.device, scale=scale_of(generator), dtype=weight.dtype
    )


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
    """x`scale` SR of `lr` `(B, 3, h, w)` in [0, 1] -> `(B, 3, scale*h, scale*w)`, tile by tile (`plan_tiling`).

    `tile`: LR pixels per tile (staged: per HR-stage tile; the LR stage uses `LR_STAGE_TILE_FACTOR` times wider
    ones). `overlap`: LR pixels of context around each tile; None = the measured receptive radius, the smallest
    seam-free value. Smaller values are allowed (faster) but warned about: seams may show. `progress(done,
    total)` is called after every tile. Returns the SR image on `lr`'s device: float (not clamped), or with
    `to_uint8` each tile rounded as `save_image` does straight into a uint8 buffer (`uint8_image_buffer`,
    allocated after the LR stage), so no float HR image ever exists. Memory: `estimate_memory`.
    """
    return _run_plan(generator, lr, plan_tiling(generator, tile, overlap), progress, to_uint8)


def _run_plan(
    generator: SRGenerator, lr: Tensor, plan: TilingPlan, progress: ProgressFn | None, to_uint8: bool
) -> Tensor:
    """`lr` (on any device, the generator's dtype) through `plan`; the result stays on `lr`'s device."""
    height, width = lr.shape[-2:]
    if plan.mode == "whole":
        total = 1
    elif plan.mode == "staged":
        total = count_tile_steps(generator, height, width, plan.tile)
    else:
        total = _tile_count(height, width, plan.tile)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    device = _weight(generator).device
    if plan.mode == "whole":
        sr = _sr_of(generator)(lr.to(device)).to(lr.device)
        step()
        return quantize_uint8(sr) if to_uint8 else sr
    if plan.mode == "staged":
        features = encode_tiled(generator, lr, LR_STAGE_TILE_FACTOR * plan.tile, step)
        return decode_tiled(generator, features, lr, plan.tile, plan.overlap, step, to_uint8=to_uint8)
    out = (
        uint8_image_buffer(lr.shape[0], scale_of(generator) * height, scale_of(generator) * width)
        if to_uint8
        else None
    )
    return map_tiles(
        _sr_of(generator),
        [lr],
        tile=plan.tile,
        halo=plan.overlap,
        device=device,
        scale=scale_of(generator),
        progress=step,
        out=out,
        convert=quantize_uint8 if to_uint8 else None,
    )


def super_resolve(
    generator: SRGenerator,
    image: Tensor,
    tile: int,
    overlap: int | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Tensor:
    """x`scale` SR of one image `(3, h, w)` or a batch `(B, 3, h, w)`; `tile` 0 runs it whole, else tiled
    (`plan_tiling`: staged, overlap, or whole where tiling cannot be exact).

    uint8 in -> uint8 out, rounded as `save_image` rounds (tiled: each tile straight into the uint8 image, no
    float HR image is held); float in [0, 1] -> float of the input's dtype, not clamped. The input follows the
    generator's dtype (`.half()`) and memory format (channels_last weights, channels_last input). The one
    implementation behind `upscale` (the CLI) and `SRModel.upscale`.
    """
    lr = image if image.dim() == 4 else image.unsqueeze(0)
    to_uint8 = lr.dtype == torch.uint8
    out_dtype = lr.dtype
    weight = _weight(generator)
    lr = (to_float(lr) if to_uint8 else lr).to(weight.dtype)
    if weight.is_contiguous(memory_format=torch.channels_last):
        lr = lr.contiguous(memory_format=torch.channels_last)
    plan = plan_tiling(generator, tile, overlap)
    with torch.inference_mode():
        sr = _run_plan(generator, lr, plan, progress, to_uint8)
    sr = sr if to_uint8 else sr.to(out_dtype)
    return sr if image.dim() == 4 else sr[0]
