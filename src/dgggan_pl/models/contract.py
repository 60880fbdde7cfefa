"""The generator contract: what training, inference, tiling and weight loading may assume of a generator.

Written once here. Training asks the least: an `nn.Module` whose `generator(lr)` returns the SR image, either as a
bare tensor (most published SR networks, e.g. ESRGAN's RRDBNet) or as a `GeneratorOutput` that may carry a gradient
map; `generator_output` reads either, and `outputs_gradient_map` tells from that output (not from a flag of the
class) whether the gradient-map terms of the objective can run. Inference asks no more (`dgggan_pl.SRModel` loads,
tiles exactly, saves and exports any such network); one that also has the two stages of `SRGenerator` (a
`typing.Protocol`) gets the staged tiling, exact even with global ops such as SE gates, which never reaches into
one architecture's submodules. Optional members inference reads when present: `scale`, `in_channels` (else
measured / RGB), `config` (constructor arguments, `init_args.records_init_args`), `activation_bytes(height, width)`
(its own memory estimate) and `whole_image_only` (never tiled). `DGGGANGenerator` satisfies both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

IMAGE_CHANNELS = 3  # training and validation feed RGB batches
PROBE_LR_SIZE = 8  # LR pixels per side of the probe batch of `outputs_gradient_map`: one cheap forward

Run = Callable[..., Tensor]  # run(fn, *inputs) -> fn(*inputs), computed directly or tile by tile


def apply(fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """The plain `run` of `SRGenerator.encode`: `fn(*inputs)` on the whole maps."""
    return fn(*inputs)


class LRFeatures(NamedTuple):
    """The LR-resolution state before the x`scale` tails, `(B, C, h, w)` each (same C); `gradient` may be None."""

    image: Tensor
    gradient: Tensor | None


class GeneratorOutput(NamedTuple):
    """`sr`: `(B, 3, H, W)` SR image; `grad_map`: `(B, 3, H, W)` SR gradient map, None without the branch."""

    sr: Tensor
    grad_map: Tensor | None


@runtime_checkable
class SRGenerator(Protocol):
    """An x`scale` super-resolution generator, as the rest of the package uses it.

    - `generator(lr)`: `(B, in_channels, h, w)` float in [0, 1] -> `GeneratorOutput` at `(B, 3, scale*h,
      scale*w)`, and equal to `decode(encode(lr), lr)` (one forward, two stages).
    - `encode(lr, run, inplace=...)`: everything at LR resolution. Every LOCAL op (a function of a bounded
      neighbourhood of its inputs) is applied as `run(fn, *inputs)`; ops that are not local (an SE gate's
      global pooling) run on the maps `run` returned. Tiled inference passes a `run` that computes `fn` tile
      by tile with the halo it measures on `fn` itself, so nothing else about the architecture is assumed.
      `inplace=True` (inference only) may write into maps `run` just made.
    - `decode(features, lr)`: the HR stage, purely local in `features` and `lr` (its radius is measured too).
    - It is an `nn.Module`; of its methods the package calls `parameters()` (tiles run on the device and memory
      format of the first parameter), `to()` and `state_dict()` (typed loosely here: their overloads are
      torch's).
    """

    scale: int
    in_channels: int

    def __call__(self, lr: Tensor) -> GeneratorOutput: ...

    def encode(self, lr: Tensor, run: Run = apply, *, inplace: bool = False) -> LRFeatures: ...

    def decode(self, features: LRFeatures, lr: Tensor) -> GeneratorOutput: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    @property
    def to(self) -> Callable[..., Any]: ...

    @property
    def state_dict(self) -> Callable[..., dict[str, Any]]: ...


def generator_output(result: Tensor | GeneratorOutput) -> GeneratorOutput:
    """What training and validation read of `generator(lr)`: a `GeneratorOutput` as it is, a bare `(B, 3, H, W)`
    tensor as the SR image with no gradient map."""
    if isinstance(result, GeneratorOutput):
        return result
    if isinstance(result, Tensor):
        return GeneratorOutput(result, None)
    raise TypeError(
        f"a generator's forward must return the SR image as a tensor or a GeneratorOutput(sr, grad_map) "
        f"(dgggan_pl.models.contract), got {type(result).__name__}"
    )


def outputs_gradient_map(generator: nn.Module) -> bool:
    """Whether `generator` outputs a gradient map, read from its output on a small RGB batch.

    One forward in eval mode without autograd, on the device and dtype of its first parameter; the training
    mode is restored after. Training decides from this which terms of the objective can run (`grad_map` terms
    need the map), so no architecture has to declare it.
    """
    first = next(generator.parameters(), None)
    device, dtype = (first.device, first.dtype) if first is not None else (None, None)
    probe = torch.zeros(1, IMAGE_CHANNELS, PROBE_LR_SIZE, PROBE_LR_SIZE, device=device, dtype=dtype)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            output = generator_output(generator(probe))
    finally:
        generator.train(was_training)
    return output.grad_map is not None
