"""Peer models (ESRGAN, Real-ESRGAN, RCAN, SwinIR, HAT, SPAN, ...) from their released weights, via spandrel.

spandrel (the optional extra `peers`) recognises some forty SR architectures and their hyper-parameters from a
state dict alone. This module is the one place that talks to it: the file is read here without running code
(`torch.load(weights_only=True)`, or safetensors), spandrel builds the architecture, and `PeerGenerator`
gives it the interface our rows, `complexity` and `upscale` use (`scale`, `in_channels`, `forward(lr).sr`).

Peers always run on the whole image. Our exact tiling drives our generator's own two stages; overlap tiling of
a peer is exact only when the overlap covers its receptive field, which is hundreds of LR pixels for
ESRGAN's 23 RRDBs and the whole image for RCAN's channel attention or a transformer's global ops. So instead
`upscale` checks the memory a whole-image forward needs (`PeerGenerator.estimate_memory`) before it starts.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dgggan_pl.models.contract import GeneratorOutput, LRFeatures, Run, apply
from dgggan_pl.tiling import MemoryEstimate
from dgggan_pl.weights import SAFETENSORS_SUFFIX, WeightsError, load_tensors_only, sidecar_path

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")  # what peers release; `.ckpt` is always a dgggan-pl training file
PEER_SCALE = 4  # the paper's task: every row of Tables 3/4 and every `upscale` output is x4
INSTALL_HINT = "pip install 'dgggan-pl[peers]'"
PROBE_SIZE = 32  # LR side of the forward that measures a peer's activation memory (it grows with the area)
# Tracked tensors miss convolution workspaces: whole-image RSS growth at LR 256x256 was 1.44x the tracked peak
# for ESRGAN (64nf, 23nb) and 1.07x for RCAN (10 groups x 20 blocks), so the estimate is scaled up by this.
ACTIVATION_MARGIN = 1.5


class PeerError(WeightsError):
    """A peer weights file cannot be used (the message is one line naming the file and why)."""


def is_peer_file(path: str | os.PathLike) -> bool:
    """True for files that are not ours: `.pth`/`.pt`/`.bin`, or `.safetensors` without our JSON config."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix in PICKLE_SUFFIXES or (suffix == SAFETENSORS_SUFFIX and not sidecar_path(path).is_file())


def _not_ours(path: Path) -> str:
    """What our own loader would have said about `path`, so a failed peer load still explains both."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return f"{path}: its config {sidecar_path(path)} is missing (ours are written by `python -m dgggan_pl.export`)"
    return f"{path}: unknown weights format (not a dgggan-pl .ckpt or .safetensors + .json)"


def _spandrel(path: Path) -> Any:
    try:
        import spandrel
    except ImportError:
        raise PeerError(
            f"{_not_ours(path)}; peer models are read by spandrel, which is not installed: {INSTALL_HINT}"
        ) from None
    return spandrel


def read_state_dict(path: Path) -> Mapping[str, Any]:
    """The tensors of a peer file, read without running code (a pickle holding code is refused unrun)."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise PeerError(f"{_not_ours(path)}, nor a readable safetensors file ({error})") from None
    state = load_tensors_only(path, "cpu", PeerError, f"{_not_ours(path)}, nor a readable PyTorch file")
    if not isinstance(state, Mapping):
        raise PeerError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_descriptor(path: str | os.PathLike, scale: int = PEER_SCALE) -> Any:
    """spandrel's `ImageModelDescriptor` for `path` (on the CPU, eval mode); refuses other scales and non-RGB."""
    path = Path(path)
    if not path.is_file():
        raise PeerError(f"{path}: weights file not found")
    spandrel = _spandrel(path)
    state = spandrel.canonicalize_state_dict(dict(read_state_dict(path)))
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError as error:
        reason = str(error) or "no architecture it knows matches the file's tensor names"
        raise PeerError(f"{_not_ours(path)}, and spandrel does not recognise it: {reason}") from None
    except (KeyError, ValueError, RuntimeError, AssertionError) as error:
        raise PeerError(
            f"{path}: spandrel matched an architecture but cannot build it ({type(error).__name__}: {error})"
        ) from None
    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise PeerError(f"{path}: {name} is a {descriptor.purpose} model, not super-resolution")
    if descriptor.scale != scale:
        raise PeerError(
            f"{path}: {name} is a x{descriptor.scale} model; only x{scale} models can be used here"
        )
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise PeerError(
            f"{path}: {name} maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
            "only RGB models (3 to 3) can be used here"
        )
    return descriptor.eval()


class _PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive during a forward (each storage counted once, freed with its tensor)."""

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


class PeerGenerator(nn.Module):
    """A spandrel SR model as a generator: `(B, 3, h, w)` in [0, 1] -> `GeneratorOutput(sr, None)`, `sr`
    `(B, 3, s*h, s*w)` clamped to [0, 1] (spandrel pads to the architecture's size needs and crops back)."""

    use_gradient_branch = False  # no gradient map: Figure 5 needs one of ours

    def __init__(self, descriptor: Any, path: str | os.PathLike) -> None:
        super().__init__()
        self.model = descriptor.model  # registered, so .to(device / memory_format) moves what spandrel runs
        self._descriptor = descriptor
        self.scale: int = descriptor.scale
        self.in_channels: int = descriptor.input_channels
        self.architecture: str = descriptor.architecture.name
        tags = f" ({', '.join(descriptor.tags)})" if descriptor.tags else ""
        self.source = f"spandrel {self.architecture}{tags}: {path}"
        self._bytes_per_pixel: float | None = None

    def forward(self, lr: Tensor) -> GeneratorOutput:
        # One image per call (spandrel's contract); a copy, since some architectures (RCAN) rescale in place.
        return GeneratorOutput(torch.cat([self._descriptor(image[None].clone()) for image in lr]), None)

    # `SRGenerator`'s two stages, so that a peer types as a generator; but a peer is one opaque forward whose ops
    # need not be local, so the stage-wise (tiled) path is refused with a reason instead of being approximated.
    def encode(self, lr: Tensor, run: Run = apply, *, inplace: bool = False) -> LRFeatures:
        raise self._whole_image_only()

    def decode(self, features: LRFeatures, lr: Tensor) -> GeneratorOutput:
        raise self._whole_image_only()

    def _whole_image_only(self) -> NotImplementedError:
        return NotImplementedError(
            f"{self.source}: a peer model runs on the whole image only (tiling needs our generator's stages)"
        )

    def activation_bytes_per_pixel(self) -> float:
        """Peak working memory of a whole-image forward per LR pixel, measured once on a small probe."""
        if self._bytes_per_pixel is None:
            needs = self._descriptor.size_requirements
            side = max(PROBE_SIZE, needs.minimum)
            side = math.ceil(side / needs.multiple_of) * needs.multiple_of
            parameter = next(self.parameters())
            probe = torch.rand(
                1, self.in_channels, side, side, device=parameter.device, dtype=parameter.dtype
            )
            tracker = _PeakTensorBytes()
            with tracker:
                self(probe)
            self._bytes_per_pixel = ACTIVATION_MARGIN * tracker.peak / side**2
        return self._bytes_per_pixel

    def estimate_memory(self, height: int, width: int) -> MemoryEstimate:
        """`tiling.MemoryEstimate` of one whole-image forward (`tile` holds it: one tile = the whole image)."""
        lr_input = self.in_channels * height * width * next(self.parameters()).element_size()
        return MemoryEstimate(
            lr_stage=lr_input,
            hr_stage=lr_input,
            output=self.in_channels * self.scale**2 * height * width,
            tile=math.ceil(self.activation_bytes_per_pixel() * height * width),
            gate_map=0,
        )


def load_peer(
    path: str | os.PathLike,
    *,
    scale: int = PEER_SCALE,
    map_location: Any = "cpu",
    use_ema: bool | None = None,
) -> tuple[PeerGenerator, dict[str, Any]]:
    """The peer model in `path` as a `PeerGenerator` in eval mode, and a short description of it.

    `use_ema=True` is refused: a released peer file holds one set of weights, whichever they were.
    """
    if use_ema:
        raise PeerError(f"{path}: a peer model's file holds one set of weights, no EMA copy; drop --ema")
    descriptor = load_descriptor(path, scale)
    generator = PeerGenerator(descriptor, path)
    if map_location is not None:
        generator.to(map_location)
    config = {"spandrel": generator.architecture, "tags": list(descriptor.tags), "scale": generator.scale}
    return generator.eval(), config
