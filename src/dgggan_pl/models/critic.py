"""VGG-style WGAN-GP critic, used for images and for gradient maps (docs/design.md#critics)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dgggan_pl.models.blocks import scaled_kaiming_init_

_DOWN_KERNEL, _DOWN_STRIDE, _DOWN_PADDING = 4, 2, 1  # each pair halves the size (floor)


def _downsampled_size(size: int, num_stages: int) -> int:
    for _ in range(num_stages):
        size = (size + 2 * _DOWN_PADDING - _DOWN_KERNEL) // _DOWN_STRIDE + 1
    return size


class VGGCritic(nn.Module):
    """`(B, C, P, P)` -> `(B, 1)` unbounded scores (no sigmoid, no batch norm: per-sample gradient penalty).

    One (3x3 stride-1 conv, 4x4 stride-2 conv) pair per entry of `widths`, LeakyReLU after each conv,
    then flatten -> Linear(hidden_features) -> LeakyReLU -> Linear(1). The flatten size follows from
    `patch_size`, so any square patch works as long as it survives the downsampling.
    """

    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 192,
        widths: Sequence[int] = (64, 128, 256, 512, 512, 512),
        hidden_features: int = 100,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        final_size = _downsampled_size(patch_size, len(widths))
        if final_size < 1:
            raise ValueError(
                f"patch_size={patch_size} is too small for {len(widths)} stride-2 stages "
                f"(needs >= {2 ** len(widths)}); raise hr_patch_size or shorten model.*_critic.widths"
            )
        self.in_channels = in_channels
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1),
                nn.LeakyReLU(negative_slope, inplace=True),
                nn.Conv2d(width, width, _DOWN_KERNEL, stride=_DOWN_STRIDE, padding=_DOWN_PADDING),
                nn.LeakyReLU(negative_slope, inplace=True),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * final_size * final_size, hidden_features),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Linear(hidden_features, 1),
        )
        scaled_kaiming_init_(self, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, P, P)` -> `(B, 1)`."""
        expected = (self.in_channels, self.patch_size, self.patch_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"VGGCritic expects (B, {', '.join(map(str, expected))}) patches (patch_size from "
                f"hr_patch_size), got shape {tuple(x.shape)}"
            )
        return self.classifier(self.features(x))
