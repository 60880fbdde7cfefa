"""`SRModel`: one inference API for any x4 generator, ours or a peer's (diffusers' `from_pretrained` form).

    from dgggan_pl import SRModel, read_image, save_image

    model = SRModel.from_pretrained("last.ckpt").enable_tiling()  # or a save_pretrained folder, a .safetensors,
    save_image(model.upscale(read_image("photo.jpg")), "x4.png")  # or a peer's released .pth (spandrel)

The network (`generator`: `DGGGANGenerator`, `RRDBNet`, a spandrel peer, any `SRGenerator`) stays a plain module.
This layer adds where it came from (`source`, `ema`, `config`: its constructor's `{_target_, **args}`), how it is
run (`enable_tiling`: `dgggan_pl.tiling` picks the exact plan for this generator), what that costs
(`estimate_memory`) and saving (`save_pretrained`). It sits above `weights` (our files) and `peers` (theirs),
which do not import each other; `upscale`, `evaluate`, `figures` and `export` load every generator through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from dgggan_pl.models.contract import GeneratorOutput, SRGenerator, generator_output
from dgggan_pl.models.init_args import init_config, plain
from dgggan_pl.peers import is_peer_file, load_peer
from dgggan_pl.probes import in_channels_of, scale_of
from dgggan_pl.tiling import (
    DEFAULT_TILE,
    MemoryEstimate,
    ProgressFn,
    TilingPlan,
    estimate_memory,
    plan_tiling,
    super_resolve,
)
from dgggan_pl.weights import (
    PRETRAINED_NAME,
    WeightsError,
    load_stored,
    pretrained_path,
    save_generator_safetensors,
)


class SRModel(nn.Module):
    """A generator ready for inference. `forward(lr)` is the generator's (`GeneratorOutput`); `upscale` is the
    inference call (uint8 or float images, tiled after `enable_tiling`). `.to(...)`, `.half()`, `.eval()` act on
    the generator, as on any module.

    Args:
        generator: the network: `generator(lr)` -> the SR image, a tensor or a `GeneratorOutput` (`scale` and
            `in_channels` are read when it has them, else measured / RGB).
        config: its `{_target_, **constructor args}`; default: what the network recorded (`generator.config`,
            `models.init_args.records_init_args`). None for a peer: spandrel rebuilds it from its tensors.
        source: where it came from, for messages and table rows (default: the generator's own, or its class).
        ema: whether these are EMA weights (recorded by `save_pretrained`).
    """

    def __init__(
        self,
        generator: SRGenerator | nn.Module,
        *,
        config: dict[str, Any] | None = None,
        source: str | None = None,
        ema: bool = False,
    ) -> None:
        super().__init__()
        module = cast(nn.Module, generator)
        self.generator = cast(SRGenerator, module)  # registered as a submodule; typed by the contract
        recorded = getattr(generator, "config", None)
        self.config: dict[str, Any] | None = plain(config if config is not None else recorded)
        self.source: str = source or getattr(generator, "source", None) or type(generator).__name__
        self.ema = ema
        self.tile = 0  # LR pixels per tile of `upscale`; 0 = the whole image at once (`enable_tiling`)
        self.tile_overlap: int | None = None
        self.train(module.training)  # a wrapper in the mode of what it wraps (eval after from_pretrained)

    @property
    def scale(self) -> int:
        """The generator's upscaling factor (stated, or measured once: `probes.scale_of`)."""
        return scale_of(self.generator)

    @property
    def in_channels(self) -> int:
        return in_channels_of(self.generator)

    def forward(self, lr: Tensor) -> GeneratorOutput:
        """The generator's forward: `(B, 3, h, w)` in [0, 1] -> `GeneratorOutput` at `scale` times the size (a
        generator returning a bare SR tensor gives `GeneratorOutput(sr, None)`)."""
        return generator_output(self.generator(lr))

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
    ) -> SRModel:
        """The model stored at `path`, in eval mode: a training `.ckpt`, a `save_pretrained` folder, an exported
        `.safetensors` (its `.json` beside it, or the copy inside it), or a peer's released weights (`.pth`/`.pt`/
        `.bin`, or `.safetensors` not written by us: read by spandrel, extra `peers`).

        `use_ema`: None takes EMA weights when present, True requires them, False takes the raw ones. Loaded
        safely (no pickled code, config targets restricted to `dgggan_pl.models`, finite tensors only); raises
        `weights.WeightsError` (`peers.PeerError` for a peer) naming the file.
        """
        weights = pretrained_path(path)
        if is_peer_file(weights):
            peer, _ = load_peer(weights, map_location=map_location, use_ema=use_ema)
            return cls(peer)
        stored = load_stored(weights, use_ema=use_ema, map_location=map_location)
        # Every constructor argument, defaults included (a file's config may omit them): what the network recorded,
        # else the file's arguments bound to its class's signature.
        arguments = {key: value for key, value in stored.config.items() if key != "_target_"}
        config = getattr(stored.generator, "config", None) or init_config(type(stored.generator), arguments)
        return cls(stored.generator, config=config, source=str(weights), ema=stored.ema)

    def save_pretrained(self, directory: str | os.PathLike, *, ema: bool | None = None) -> Path:
        """Write `directory/generator.safetensors` and its JSON config (`config`) atomically; return the weights
        path. A peer is written as its tensors alone (what spandrel reads back). `ema` (default: as loaded) records
        that these are EMA weights, which `from_pretrained(use_ema=...)` checks."""
        if self.config is None and not getattr(self.generator, "rebuilt_from_tensors", False):
            raise WeightsError(
                f"{self.source}: its constructor arguments are unknown, so it could not be rebuilt; decorate its "
                "__init__ with dgggan_pl.models.init_args.records_init_args, or pass SRModel(generator, config=...)"
            )
        weights = Path(directory) / PRETRAINED_NAME
        save_generator_safetensors(self.generator, self.config, weights, ema=self.ema if ema is None else ema)
        return weights

    def enable_tiling(self, tile: int | None = None, overlap: int | None = None) -> SRModel:
        """Make `upscale` tiled: `tile` LR pixels per tile (None: `tiling.DEFAULT_TILE`, the CLI's), `overlap` LR
        pixels of context (None: the measured seam-free minimum). The output is the untiled one (to float
        rounding) for any generator: `tiling_plan()` says how (a generator that cannot be tiled exactly runs
        whole)."""
        tile = DEFAULT_TILE if tile is None else tile
        if tile < 1 or (overlap is not None and overlap < 0):
            raise ValueError(
                f"enable_tiling needs tile >= 1 and overlap >= 0 (or None), got tile={tile}, overlap={overlap}"
            )
        self.tile, self.tile_overlap = tile, overlap
        return self

    def disable_tiling(self) -> SRModel:
        """Make `upscale` run the whole image at once again."""
        self.tile, self.tile_overlap = 0, None
        return self

    def tiling_plan(self) -> TilingPlan:
        """How `upscale` runs this generator now (`tiling.plan_tiling`; measured once per device and dtype)."""
        return plan_tiling(self.generator, self.tile, self.tile_overlap)

    def estimate_memory(self, height: int, width: int) -> MemoryEstimate:
        """Bytes `upscale` of a `height` x `width` uint8 image allocates beyond the model (`tiling.MemoryEstimate`);
        a generator may bring its own working-set estimate (`activation_bytes`)."""
        return estimate_memory(self.generator, height, width, self.tile, self.tile_overlap)

    def upscale(self, image: Tensor, *, progress: ProgressFn | None = None) -> Tensor:
        """x`scale` SR for inference, tiled after `enable_tiling`: `(B, 3, h, w)` or `(3, h, w)`, uint8 -> uint8
        (rounded as `save_image` rounds, as `python -m dgggan_pl.upscale` writes it) or float in [0, 1] -> float
        (not clamped). Runs under `torch.inference_mode`; `progress(done, total)` after each tile."""
        return super_resolve(self.generator, image, self.tile, self.tile_overlap, progress=progress)
