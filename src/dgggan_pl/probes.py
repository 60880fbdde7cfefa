"""What a network needs, measured on small random inputs: its receptive radius and its working memory.

Both are properties of the architecture, so they are measured once on probes a few pixels wide instead of being
written down per architecture (`dgggan_pl.tiling` sizes its tiles and halos with them, `dgggan_pl.upscale` its
memory check). A probe must end on every network, whatever its weights: NaN/Inf weights make every gradient
non-finite (so "reached" everywhere), and an op that is not local (a global pooling) reaches the whole probe at
every size; the first is refused at once (`NonFiniteOutput`), the second stops once the reach passes `REACH_LIMIT`
or the next probe would pass `PROBE_BUDGET_BYTES` (`UnboundedReach`), so a probe never grows without bound (an
all-NaN first conv once grew them to 4.4 GiB). The receptive-field probes
count what autograd saves (a hook); only the working-memory probe of a whole forward tracks every tensor
(`PeakTensorBytes`, whose first use imports torch._dynamo: ~4 s, so the staged DGGGAN path never uses it).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dgggan_pl.models.contract import IMAGE_CHANNELS, generator_output

PROBE_SIZE = 17  # side (LR pixels) of the first, square probe; enough for one op's radius (an EMSRB's is 4)
# Wider probes are strips this many pixels thick, as long as the reach they measure needs: memory and time grow
# with the reach, not its square (ESRGAN's 23 RRDBs reach ~350 pixels: a 3 x 1151 strip, ~0.65 GiB with
# autograd). 3 rows leave room for a reflection padding of 2.
STRIP_THICKNESS = 3
MEMORY_PROBE_SIZE = 32  # LR side of the forward that measures working memory (which grows with the area)
# A reach past this many LR pixels is called unbounded: tiles would need more context than most images hold
# (ESRGAN's 23 RRDBs reach ~350), and a global op would otherwise keep the strips growing until the budget below.
REACH_LIMIT = 1024
# A probe that would save more than this for its backward pass is not run: the reach is then called unbounded.
PROBE_BUDGET_BYTES = 1024**3
# Tracked tensors miss convolution workspaces: whole-image RSS growth at LR 256x256 was 1.44x the tracked peak
# for ESRGAN (64nf, 23nb) and 1.07x for RCAN (10 groups x 20 blocks), so measured working memory is scaled by this.
ACTIVATION_MARGIN = 1.5

TileFn = Callable[..., Tensor]


class ProbeError(ValueError):
    """A network cannot be measured on probes (the message says why and what to do)."""


class NonFiniteOutput(ProbeError):
    """The network gives NaN/Inf on a random input: its weights hold NaN/Inf (or overflow)."""


class UnboundedReach(ProbeError):
    """The receptive field is wider than the largest probe the budget allows (a global op, or a very deep net)."""


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive during a computation (each storage counted once, freed with its tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor):
                storage = tensor.untyped_storage()
                pointer = storage.data_ptr()
                if pointer and pointer not in self._storages:
                    self._storages.add(pointer)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(tensor, self._free, pointer, storage.nbytes())
        return out

    def _free(self, pointer: int, nbytes: int) -> None:
        self._storages.discard(pointer)
        self.live -= nbytes


class _Reach(NamedTuple):
    rows: int  # how far (LR pixels) from the centre pixel the output still reads, vertically
    cols: int  # and horizontally
    saved_bytes: int  # what autograd saved for the backward pass: the probe's memory, ~ its area


def _reach(
    fn: TileFn,
    channels: Sequence[int],
    size: tuple[int, int],
    scale: int,
    device: torch.device,
    dtype: torch.dtype,
) -> _Reach:
    """How far from the centre pixel of a `size` probe its output still reads, and what the probe held.

    The gradient of the centre pixel's outputs w.r.t. random inputs is non-zero exactly on its receptive field.
    """
    height, width = size
    cy, cx = height // 2, width // 2
    saved = 0

    def count(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        probes = [
            torch.randn(1, c, height, width, device=device, dtype=dtype, requires_grad=True) for c in channels
        ]
        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            out = fn(*probes)
        window = out[..., cy * scale : (cy + 1) * scale, cx * scale : (cx + 1) * scale]
        grads = [g for g in torch.autograd.grad(window.sum(), probes, allow_unused=True) if g is not None]
    if not bool(torch.isfinite(window).all()) or not all(bool(torch.isfinite(g).all()) for g in grads):
        raise NonFiniteOutput(
            "the network gives NaN/Inf on a random input: its weights hold NaN/Inf values (check the weights file)"
        )
    reached = sum((g.abs().sum(dim=(0, 1)) for g in grads), torch.zeros(height, width, device=device)) != 0
    rows, cols = reached.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return _Reach(0, 0, saved)
    return _Reach(int((rows - cy).abs().max()), int((cols - cx).abs().max()), saved)


def receptive_radius(
    fn: TileFn,
    inputs: Sequence[Tensor],
    device: torch.device,
    scale: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    budget: int = PROBE_BUDGET_BYTES,
) -> int:
    """How many LR pixels of context one output pixel of `fn` needs, measured by back-propagation.

    `fn` maps `(1, C_i, h, w)` tensors shaped like `inputs` (only their channel counts are used) to
    `(1, C', scale*h, scale*w)`. A square `PROBE_SIZE` probe first; while the reach touches the probe's edge, strips
    `STRIP_THICKNESS` thick and twice as long measure each open axis. Probes are `dtype` on `device` (where `fn`'s
    weights live), autocast off. Raises `NonFiniteOutput` for NaN/Inf outputs or gradients and `UnboundedReach`
    when the reach passes `REACH_LIMIT` or the next strip would save more than `budget` bytes (global ops such as
    SE reach any probe whole).
    """
    channels = [x.shape[1] for x in inputs]
    reach_y, reach_x, saved = _reach(fn, channels, (PROBE_SIZE, PROBE_SIZE), scale, device, dtype)
    bytes_per_pixel = saved / PROBE_SIZE**2
    length = PROBE_SIZE
    while True:
        open_y, open_x = reach_y >= length // 2, reach_x >= length // 2
        if not (open_y or open_x):
            return max(reach_y, reach_x)
        measured = length // 2  # the probe's half-length, which the reach touched
        length = 2 * length + 1
        if measured > REACH_LIMIT or bytes_per_pixel * STRIP_THICKNESS * length > budget:
            raise UnboundedReach(
                f"the receptive field reaches past {measured} LR pixels (probes stop past {REACH_LIMIT} or "
                f"{budget / 2**20:.0f} MiB): the network has a global op or is too deep to tile exactly"
            )
        if open_x:
            reach_x = _reach(fn, channels, (STRIP_THICKNESS, length), scale, device, dtype)[1]
        if open_y:
            reach_y = _reach(fn, channels, (length, STRIP_THICKNESS), scale, device, dtype)[0]


def in_channels_of(generator: Any) -> int:
    """The channels a generator reads: its `in_channels`, else RGB (`contract.IMAGE_CHANNELS`)."""
    return int(getattr(generator, "in_channels", IMAGE_CHANNELS))


# A generator that does not state its `scale` (ESRGAN's RRDBNet) has it measured once per object.
_MEASURED_SCALES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def scale_of(generator: Any) -> int:
    """A generator's upscaling factor: its `scale`, else the output side over the input side of one small forward
    (on the device and dtype of its weights)."""
    stated = getattr(generator, "scale", None)
    if stated is not None:
        return int(stated)
    if generator not in _MEASURED_SCALES:
        weight = next(generator.parameters())
        probe = torch.zeros(
            1, in_channels_of(generator), PROBE_SIZE, PROBE_SIZE, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            height, width = generator_output(generator(probe)).sr.shape[-2:]
        if height != width or height % PROBE_SIZE:
            raise ProbeError(
                f"{type(generator).__name__} maps {PROBE_SIZE}x{PROBE_SIZE} to {width}x{height}: not an integer "
                "upscaling; give it a `scale` attribute"
            )
        _MEASURED_SCALES[generator] = height // PROBE_SIZE
    return _MEASURED_SCALES[generator]


@torch.no_grad()
def forward_bytes_per_pixel(
    fn: TileFn, in_channels: int, side: int, device: torch.device, dtype: torch.dtype
) -> float:
    """Peak working memory of one no-grad forward of `fn` per LR pixel, measured on a `side` x `side` probe and
    scaled by `ACTIVATION_MARGIN` (what the tracked tensors miss)."""
    probe = torch.rand(1, in_channels, side, side, device=device, dtype=dtype)
    tracker = PeakTensorBytes()
    with tracker:
        fn(probe)
    return ACTIVATION_MARGIN * tracker.peak / side**2


def probe_side(minimum: int = 1, multiple_of: int = 1, side: int = MEMORY_PROBE_SIZE) -> int:
    """The smallest side >= `side` and `minimum` that is a multiple of `multiple_of` (a network's size needs)."""
    return math.ceil(max(side, minimum) / multiple_of) * multiple_of
