"""Our generators in spandrel, the loader of chaiNNer and ComfyUI: `import dgggan_pl` registers them.

    import dgggan_pl, spandrel
    model = spandrel.ModelLoader().load_from_file("generator.safetensors")  # an ImageModelDescriptor, x4
    sr = model(lr)  # (1, 3, h, w) in [0, 1] -> (1, 3, 4h, 4w), clamped

spandrel sees tensors only, so it finds the generator's config in the file itself: `save_pretrained` and
`python -m dgggan_pl.export` store the sidecar JSON as one uint8 tensor (`weights.CONFIG_TENSOR`). That config is
checked and built exactly as our own loader does (`_target_` restricted to `dgggan_pl.models`, finite tensors
only). `register` adds the architecture to spandrel's `MAIN_REGISTRY`; the package calls it when spandrel is
imported, before or after dgggan_pl (`dgggan_pl.__init__`), so spandrel stays an optional extra (`peers`).
"""

from __future__ import annotations

import spandrel
from spandrel import Architecture, ArchSupport, ImageModelDescriptor, ModelTiling, StateDict
from torch import nn

from dgggan_pl.models.contract import generator_output
from dgggan_pl.probes import in_channels_of, scale_of
from dgggan_pl.weights import CONFIG_TENSOR, build_generator, check_finite, config_from_tensor

ARCH_ID = "dgggan_pl"
ARCH_NAME = "dgggan-pl"
SOURCE = "the spandrel state dict"  # what messages name: spandrel does not pass the file on


def _is_ours(state_dict: StateDict) -> bool:
    return CONFIG_TENSOR in state_dict


class DGGGANArchitecture(Architecture[nn.Module]):
    """Any generator saved by dgggan-pl (`DGGGANGenerator`, `RRDBNet`, ...), detected by its config tensor."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name=ARCH_NAME, detect=_is_ours)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[nn.Module]:
        sidecar = config_from_tensor(state_dict[CONFIG_TENSOR], SOURCE)
        generator = build_generator(sidecar["generator"], SOURCE)
        state = {key: value for key, value in state_dict.items() if key != CONFIG_TENSOR}
        check_finite(state, SOURCE)
        channels = in_channels_of(generator)
        return ImageModelDescriptor(
            generator,  # type: ignore[arg-type]  # an nn.Module (build_generator checked it)
            state,
            self,
            purpose="SR",
            tags=[type(generator).__name__, "EMA" if sidecar.get("ema") else "raw"],
            supports_half=True,
            supports_bfloat16=True,
            scale=scale_of(generator),
            input_channels=channels,
            output_channels=channels,
            # Tiles cut by the caller are not exact for generators with global ops (DGGGAN's SE gates);
            # dgggan_pl.SRModel.enable_tiling tiles any of them exactly.
            tiling=ModelTiling.DISCOURAGED,
            call_fn=lambda model, image: generator_output(model(image)).sr,
        )


def register(registry: spandrel.ArchRegistry | None = None) -> None:
    """Add our architecture to `registry` (spandrel's `MAIN_REGISTRY` by default); a second call does nothing."""
    target = spandrel.MAIN_REGISTRY if registry is None else registry
    target.add(ArchSupport.from_architecture(DGGGANArchitecture()), ignore_duplicates=True)
