"""NIQE (Mittal, Soundararajan & Bovik 2013), a torch port of the official LIVE MATLAB release.

Follows `niqe_release/computequality.m`, `computefeature.m` and `estimateaggdparam.m` step by step so that
values match MATLAB's (checked on the IQA-PyTorch calibration images, docs/metrics.md):

* the image (double, [0, 255]) is cropped to whole `block_size` blocks (top-left kept);
* at each of 2 scales: MSCN coefficients `(I - mu) / (sigma + 1)` with a 7x7 Gaussian (sigma 7/6) and
  'replicate' padding; per block 18 AGGD features (the coefficients, then their products with the 4 neighbours
  [0 1; 1 0; 1 1; 1 -1] by `circshift` inside the block), shape fitted on the grid 0.2:0.001:10;
  between scales MATLAB `imresize(I, 0.5)` (bicubic, antialiased, no rounding);
* MSCN values below `mscn_zero_tol` (rounding noise on flat patches) are set to exactly 0 (our one deviation);
* `nanmean` / `nancov` (complete rows) of the block features, then
  `sqrt((mu_p - mu_d) pinv((cov_p + cov_d) / 2) (mu_p - mu_d)')` against the pristine model.

Everything runs in float64 on the input's device; images of one size are processed as a batch, each image's
value independent of the others.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.special
import torch
import torch.nn.functional as F
from torch import Tensor

from dgggan_pl.data.imresize import imresize
from dgggan_pl.metrics.fidelity import (
    crop_border,
    filter_valid,
    gaussian_kernel_1d,
    quantize_8bit,
    rgb_to_gray_uint8,
    rgb_to_y_uint8,
)
from dgggan_pl.metrics.per_image import PerImageMetric
from dgggan_pl.utils.atomic import atomic_path

# MATLAB's neighbour shifts for the pairwise products, in `circshift(structdis, shift)` order.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_NUM_SCALES = 2  # `scalenum = 2` in computequality.m
# The LIVE release's pristine model as committed to roimehrez/PIRM2018 (8347 bytes); conf/metrics repeats these.
LIVE_MODEL_SHA256 = "fa2aa4d12dd9595c3fb6bf8b4e1a15c79d5d1469238d0901c88dead195be578d"
LIVE_MODEL_URL = (
    "https://raw.githubusercontent.com/roimehrez/PIRM2018/d585552a22b4eb95ddcb23a6edb74a0a3a5d6fbf/"
    "utils/niqe_release/modelparameters.mat"
)


class NIQEModelError(FileNotFoundError):
    """The NIQE pristine model file is missing, unreadable or has the wrong checksum."""


@dataclass(frozen=True)
class NIQESettings:
    """Constants of the official release (values in conf/metrics/default.yaml cite computequality.m)."""

    block_size: int = 96
    window_size: int = 7
    window_sigma: float = 7.0 / 6.0
    mscn_c: float = 1.0
    gamma_start: float = 0.2
    gamma_stop: float = 10.0
    gamma_step: float = 0.001
    # MSCN values below this are floating-point noise of a flat patch (I == mu up to rounding): set to 0.
    mscn_zero_tol: float = 1e-8


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    """Download `url` to `target` atomically, refusing a file whose sha256 differs from the pinned one."""
    with atomic_path(target, suffix=".part") as tmp:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
        got = sha256_of(tmp)
        if got != sha256:
            raise NIQEModelError(f"downloaded {url} has sha256 {got}, expected {sha256}; not using it")


def default_model_path() -> Path:
    """The download cache and last place searched when no path is configured: `$TORCH_HOME/hub/dgggan/`."""
    return Path(torch.hub.get_dir()) / "dgggan" / "niqe_modelparameters.mat"


def find_pristine_model(
    path: str | os.PathLike | None, search: Sequence[str | os.PathLike] = ()
) -> list[Path]:
    """The places looked at, in order: `path` alone when given, else `search` then `default_model_path()`."""
    if path:
        return [Path(path).expanduser()]
    return [*(Path(p).expanduser() for p in search), default_model_path()]


def missing_model_message(candidates: Sequence[Path], sha256: str, failure: str | None = None) -> str:
    """One line: where the NIQE model was looked for and the overrides that provide it."""
    where = ", ".join(str(c) for c in candidates)
    failed = f" and {failure}" if failure else ""
    return (
        f"NIQE model not found (looked in {where}){failed}; copy the LIVE niqe_release modelparameters.mat "
        f"(sha256 {sha256[:12]}...) to {candidates[0]}, set metrics.niqe_model_path=FILE or metrics.download=true"
    )


def load_pristine_model(
    path: str | os.PathLike | None,
    url: str | None,
    sha256: str,
    search: Sequence[str | os.PathLike] = (),
) -> tuple[Tensor, Tensor]:
    """`(mu (36,), cov (36, 36))` float64 from the LIVE `modelparameters.mat`: the first file found (offline first).

    Only when no candidate exists and `url` is given (`metrics.download=true`) is the file fetched, to
    `default_model_path()` (or `path`). Raises `NIQEModelError` with one line naming where it looked and what
    to do, or when the checksum does not match.
    """
    candidates = find_pristine_model(path, search)
    target = next((c for c in candidates if c.is_file()), None)
    if target is None:
        if not url:
            raise NIQEModelError(missing_model_message(candidates, sha256))
        target = candidates[-1]
        try:
            _download(url, target, sha256)
        except (OSError, RuntimeError, ValueError) as err:
            raise NIQEModelError(
                missing_model_message(candidates, sha256, f"downloading {url} failed ({err})")
            ) from None
    got = sha256_of(target)
    if got != sha256:
        raise NIQEModelError(
            f"{target} has sha256 {got}, expected {sha256} (LIVE niqe_release modelparameters.mat); replace it"
        )
    mat = scipy.io.loadmat(str(target))
    mu = torch.from_numpy(np.asarray(mat["mu_prisparam"], dtype=np.float64).reshape(-1))
    cov = torch.from_numpy(np.asarray(mat["cov_prisparam"], dtype=np.float64))
    return mu, cov


def gamma_tables(settings: NIQESettings) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The grid `gam = 0.2:0.001:10` and, per grid value, the AGGD ratio and the two Gamma-function factors.

    Computed with scipy's `gamma` in float64, as MATLAB does, so the grid search picks the same index.
    """
    count = round((settings.gamma_stop - settings.gamma_start) / settings.gamma_step) + 1
    gam = settings.gamma_start + np.arange(count, dtype=np.float64) * settings.gamma_step
    g1, g2, g3 = (scipy.special.gamma(k / gam) for k in (1.0, 2.0, 3.0))
    r_gam = g2**2 / (g1 * g3)
    beta_factor = np.sqrt(g1 / g3)  # betal = leftstd * sqrt(gamma(1/a) / gamma(3/a))
    mean_factor = g2 / g1  # meanparam = (betar - betal) * gamma(2/a) / gamma(1/a)
    return tuple(torch.from_numpy(t) for t in (gam, r_gam, beta_factor, mean_factor))  # type: ignore[return-value]


class NIQE(torch.nn.Module):
    """NIQE of grayscale images: `(B, 1, H, W)` float in [0, 255] (same size within a batch) -> `(B,)` float64.

    The pristine model and lookup tables are non-persistent buffers: they follow `.to(device)` but never enter
    a checkpoint.
    """

    # Non-persistent buffers, declared for the type checker (Module.__getattr__ is untyped).
    mu_pristine: Tensor
    cov_pristine: Tensor
    window: Tensor
    gam: Tensor
    r_gam: Tensor
    beta_factor: Tensor
    mean_factor: Tensor

    def __init__(
        self, mu_pristine: Tensor, cov_pristine: Tensor, settings: NIQESettings | None = None
    ) -> None:
        super().__init__()
        self.settings = settings or NIQESettings()
        s = self.settings
        gam, r_gam, beta_factor, mean_factor = gamma_tables(s)
        buffers = {
            "mu_pristine": mu_pristine.to(torch.float64).reshape(-1),
            "cov_pristine": cov_pristine.to(torch.float64),
            "window": gaussian_kernel_1d(s.window_size, s.window_sigma),
            "gam": gam,
            "r_gam": r_gam,
            "beta_factor": beta_factor,
            "mean_factor": mean_factor,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _nearest_gamma(self, rhatnorm: Tensor) -> Tensor:
        """`[~, i] = min((r_gam - rhatnorm).^2)`: r_gam is strictly increasing, so only the two grid values
        around `rhatnorm` can win (ties -> the lower index, like MATLAB's first minimum; NaN -> index 1)."""
        last = self.r_gam.numel() - 1
        upper = torch.searchsorted(self.r_gam, rhatnorm.nan_to_num(0.0).contiguous()).clamp(1, last)
        lower = upper - 1
        d_lower = (self.r_gam[lower] - rhatnorm) ** 2
        d_upper = (self.r_gam[upper] - rhatnorm) ** 2
        index = torch.where(d_upper < d_lower, upper, lower)
        return torch.where(rhatnorm.isnan(), 0, index)

    def _aggd(self, vec: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`estimateaggdparam.m` on the last dim of `vec` -> `(alpha, betal, betar, grid index of alpha)`."""
        sq = vec * vec
        neg = vec < 0
        n_neg = neg.sum(-1)
        n_pos = (vec > 0).sum(-1)
        sq_neg = torch.where(neg, sq, 0.0).sum(-1)
        sq_pos = torch.where(vec > 0, sq, 0.0).sum(-1)
        # mean over an empty side is NaN, as in MATLAB (0 / 0)
        leftstd = torch.sqrt(sq_neg / n_neg)
        rightstd = torch.sqrt(sq_pos / n_pos)
        gammahat = leftstd / rightstd
        rhat = vec.abs().mean(-1) ** 2 / sq.mean(-1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
        index = self._nearest_gamma(rhatnorm)
        factor = self.beta_factor[index]
        return self.gam[index], leftstd * factor, rightstd * factor, index

    def _block_features(self, blocks: Tensor) -> Tensor:
        """`computefeature.m`: `(B, N, h, w)` MSCN blocks -> `(B, N, 18)`.

        The coefficients and their 4 neighbour products are fitted in one `_aggd` call (dim 2 of the stack).
        """
        products = [blocks * torch.roll(blocks, shifts=shift, dims=(-2, -1)) for shift in _SHIFTS]
        alpha, betal, betar, index = self._aggd(torch.stack([blocks, *products], dim=2).flatten(-2))
        feats = [alpha[..., 0], (betal[..., 0] + betar[..., 0]) / 2]
        meanparam = (betar - betal) * self.mean_factor[index]
        for k in range(1, len(_SHIFTS) + 1):
            feats += [alpha[..., k], meanparam[..., k], betal[..., k], betar[..., k]]
        return torch.stack(feats, dim=-1)

    def _mscn(self, image: Tensor) -> Tensor:
        """MSCN coefficients; the Gaussian is applied separably (it is rank one, as MATLAB's imfilter also finds)."""
        pad = self.settings.window_size // 2
        both = torch.cat([image, image * image], dim=1)
        filtered = filter_valid(F.pad(both, (pad, pad, pad, pad), mode="replicate"), self.window)
        mu, mean_sq = filtered[:, :1], filtered[:, 1:]
        sigma = torch.sqrt((mean_sq - mu * mu).abs())
        mscn = (image - mu) / (sigma + self.settings.mscn_c)
        # On flat patches MATLAB's sign of (I - mu) is rounding noise that depends on how the filter sums;
        # zeroing it makes the value independent of the backend (docs/metrics.md, "NIQE deviations").
        return torch.where(mscn.abs() < self.settings.mscn_zero_tol, 0.0, mscn)

    @staticmethod
    def _blocks(image: Tensor, size: int) -> Tensor:
        """`(B, 1, H, W)` -> `(B, N, size, size)` non-overlapping blocks (MATLAB blkproc's grid)."""
        b = image.shape[0]
        rows, cols = image.shape[-2] // size, image.shape[-1] // size
        blocks = image.reshape(b, rows, size, cols, size).permute(0, 3, 1, 2, 4)  # column-major like blkproc
        return blocks.reshape(b, rows * cols, size, size)

    def features(self, gray: Tensor) -> Tensor:
        """`(B, 1, H, W)` in [0, 255] -> `(B, N, 36)` block features of the two scales."""
        size = self.settings.block_size
        rows, cols = gray.shape[-2] // size, gray.shape[-1] // size
        if gray.dim() != 4 or gray.shape[1] != 1:
            raise ValueError(f"NIQE expects (B, 1, H, W) grayscale, got shape {tuple(gray.shape)}")
        if rows * cols < 2:  # the block covariance needs two blocks
            raise ValueError(
                f"NIQE needs at least two {size}x{size} blocks (an image of {2 * size}x{size} or more after "
                f"border cropping), got {tuple(gray.shape[-2:])}; drop niqe/pi from metrics.benchmark.metrics "
                "for smaller images"
            )
        image = gray.to(torch.float64)[..., : rows * size, : cols * size]
        feats = []
        for scale in range(1, _NUM_SCALES + 1):
            feats.append(self._block_features(self._blocks(self._mscn(image), size // scale)))
            if scale < _NUM_SCALES:
                image = imresize(image, scale=0.5)
        return torch.cat(feats, dim=-1)

    def forward(self, gray: Tensor) -> Tensor:
        feats = self.features(gray)
        complete = ~feats.isnan().any(dim=-1, keepdim=True)  # nancov keeps complete rows only
        valid = ~feats.isnan()
        mu_dist = torch.where(valid, feats, 0).sum(1) / valid.sum(1)  # nanmean per column
        rows = torch.where(complete, feats, 0)
        n_rows = complete.sum(1, keepdim=True).to(feats.dtype)  # (B, 1, 1)
        centred = torch.where(complete, rows - rows.sum(1, keepdim=True) / n_rows, 0)
        cov_dist = centred.transpose(1, 2) @ centred / (n_rows - 1)
        inv = torch.linalg.pinv((self.cov_pristine + cov_dist) / 2)
        delta = (self.mu_pristine - mu_dist)[:, None, :]
        return torch.sqrt((delta @ inv @ delta.transpose(1, 2)).reshape(-1))


NIQE_CONVENTIONS = ("official", "pirm")


def niqe_input(image: Tensor, convention: str, border: int) -> Tensor:
    """`(B, 3, H, W)` in [0, 1] -> the `(B, 1, H', W')` plane NIQE scores, as the convention's MATLAB code makes it.

    `official`: `rgb2gray` of the 8-bit image, uncropped (LIVE release). `pirm`: Y of `rgb2ycbcr` of the 8-bit
    image (uint8), `border` px shaved (PIRM 2018 `convert_shave_image`).
    """
    rgb_255 = quantize_8bit(image)
    if convention == "official":
        return rgb_to_gray_uint8(rgb_255)
    if convention == "pirm":
        return crop_border(rgb_to_y_uint8(rgb_255), border)
    raise ValueError(f"NIQE convention must be one of {NIQE_CONVENTIONS}, got {convention!r}")


class NIQEScore(PerImageMetric):
    """Mean per-image NIQE of the SR images (no reference used); lower is better."""

    higher_is_better = False

    def __init__(self, niqe: NIQE, convention: str = "pirm", crop_border: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if convention not in NIQE_CONVENTIONS:
            raise ValueError(f"NIQE convention must be one of {NIQE_CONVENTIONS}, got {convention!r}")
        self.niqe, self.convention, self.crop_border = niqe, convention, crop_border

    def score(self, sr: Tensor, hr: Tensor) -> Tensor:
        return self.niqe(niqe_input(sr, self.convention, self.crop_border))
