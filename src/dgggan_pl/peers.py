"""Peer models (ESRGAN, Real-ESRGAN, RCAN, SwinIR, HAT, SPAN, ...) from their released weights, via spandrel.

spandrel (the optional extra `peers`) recognises some forty SR architectures and their hyper-parameters from a
state dict alone. This module reads peers' files with it (`dgggan_pl.spandrel_support` is the other direction:
ours registered in spandrel): the file is read here without running code (`torch.load(weights_only=True)`, or
safetensors), its tensors must be finite, spandrel builds the architecture, and `PeerGenerator` gives it the
generator contract (`scale`, `in_channels`, `forward(lr).sr`), so `SRModel` serves it like ours.

Peers run on the whole image (`whole_image_only`). Overlap tiling of a peer is exact only when the overlap covers
its receptive field, which is hundreds of LR pixels for ESRGAN's 23 RRDBs and the whole image for RCAN's channel
attention or a transformer's global ops, and spandrel pads a tile to its size needs unlike the whole image. So
`upscale` checks the memory a whole-image forward needs (`PeerGenerator.activation_bytes`) before it starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from dgggan_pl.models.contract import GeneratorOutput
from dgggan_pl.probes import forward_bytes_per_pixel, probe_side
from dgggan_pl.weights import (
    SAFETENSORS_SUFFIX,
    WeightsError,
    check_finite,
    has_our_config,
    load_tensors_only,
    sidecar_path,
)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")  # what peers release; `.ckpt` is always a dgggan-pl training file
PEER_SCALE = 4  # the paper's task: every row of Tables 3/4 and every `upscale` output is x4
INSTALL_HINT = "pip install 'dgggan-pl[peers]'"


class PeerError(WeightsError):
    """A peer weights file cannot be used (the message is one line naming the file and why)."""


def is_peer_file(path: str | os.PathLike) -> bool:
    """True for files that are not ours: `.pth`/`.pt`/`.bin`, or `.safetensors` without our config (no JSON beside
    it, none inside it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix in PICKLE_SUFFIXES or (suffix == SAFETENSORS_SUFFIX and not has_our_config(path))


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
    check_finite(state, path)
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


class PeerGenerator(nn.Module):
    """A spandrel SR model as a generator: `(B, 3, h, w)` in [0, 1] -> `GeneratorOutput(sr, None)`, `sr`
    `(B, 3, s*h, s*w)` clamped to [0, 1] (spandrel pads to the architecture's size needs and crops back)."""

    # Tiles of a peer are not exact (see the module docstring): `dgggan_pl.tiling` runs it on the whole image.
    whole_image_only = True
    # spandrel rebuilds it from its tensors alone: `SRModel.save_pretrained` writes them without a config.
    rebuilt_from_tensors = True

    def __init__(self, descriptor: Any, path: str | os.PathLike) -> None:
        super().__init__()
        # Registered, so that .to(device / memory_format / dtype) moves what spandrel runs.
        self.model = descriptor.model
        self._descriptor = descriptor
        self.scale: int = descriptor.scale
        self.in_channels: int = descriptor.input_channels
        self.architecture: str = descriptor.architecture.name
        tags = f" ({', '.join(descriptor.tags)})" if descriptor.tags else ""
        self.source = f"spandrel {self.architecture}{tags}: {path}"
        self._bytes_per_pixel: dict[tuple[torch.device, torch.dtype], float] = {}

    def forward(self, lr: Tensor) -> GeneratorOutput:
        # One image per call (spandrel's contract); a copy, since some architectures (RCAN) rescale in place.
        return GeneratorOutput(torch.cat([self._descriptor(image[None].clone()) for image in lr]), None)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The network's tensors keyed as its authors released them: what `save_pretrained` writes and spandrel
        reads back (not under this wrapper's `model.` prefix)."""
        return self.model.state_dict(*args, **kwargs)

    def activation_bytes(self, height: int, width: int) -> int:
        """Peak working memory of one forward on a `height` x `width` input (the optional memory estimate of the
        generator contract), measured once per device and dtype on a probe that meets spandrel's size needs."""
        parameter = next(self.parameters())
        key = (parameter.device, parameter.dtype)
        if key not in self._bytes_per_pixel:
            needs = self._descriptor.size_requirements
            side = probe_side(needs.minimum, needs.multiple_of)
            self._bytes_per_pixel[key] = forward_bytes_per_pixel(
                self, self.in_channels, side, parameter.device, parameter.dtype
            )
        return math.ceil(self._bytes_per_pixel[key] * height * width)


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
