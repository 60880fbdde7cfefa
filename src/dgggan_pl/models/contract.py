"""The generator contract: what training, inference, tiling and weight loading may assume of a generator.

Written once here, as a `typing.Protocol`, so that `tiling`, `weights`, `upscale` and the LightningModule are
typed against it and never reach into one architecture's submodules. `DGGGANGenerator` satisfies it; a new
architecture does when it provides the members of `SRGenerator` with the meaning stated there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn

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
