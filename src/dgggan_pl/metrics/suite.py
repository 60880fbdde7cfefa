"""All metrics of one benchmark set, as the training module and `dgggan_pl.evaluate` use them.

`BenchmarkMetrics` is built from `cfg.metrics.benchmark` (a `_partial_` config) once per benchmark set.
Metrics whose external files are missing are either an error (LPIPS `pretrained`; NIQE when
`on_missing_model=error`, as `evaluate` sets it) or listed in `unavailable` with the reason, logged once per
process - never reported as a number. Nothing is downloaded unless `download=True` (`metrics.download`): the
demo and tests make no network attempt. A disabled metric is listed too, as "disabled (metrics.X=disabled)".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from dgggan_pl.metrics.fidelity import PSNRY, SSIMY
from dgggan_pl.metrics.niqe import (
    LIVE_MODEL_SHA256,
    LIVE_MODEL_URL,
    NIQE,
    NIQEModelError,
    NIQEScore,
    NIQESettings,
    find_pristine_model,
    load_pristine_model,
    missing_model_message,
)
from dgggan_pl.metrics.per_image import PerImageMetric, name_key
from dgggan_pl.metrics.perceptual import (
    LPIPSScore,
    MaScore,
    alexnet_checkpoint_path,
    alexnet_missing_message,
    build_lpips,
    build_nrqm,
    lpips_key,
)

METRICS = ("psnr", "ssim", "lpips", "niqe", "ma", "pi")
MISSING_MODEL_POLICIES = ("unavailable", "error")
PI_MA_OFFSET = 10.0  # PI = ((10 - Ma) + NIQE) / 2 (Blau et al., PIRM 2018)
DISABLED_LPIPS = "disabled (metrics.lpips=disabled)"
log = logging.getLogger(__name__)
_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log a missing metric once per process, not once per benchmark set or validation epoch."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


@functools.cache
def _shared_lpips(mode: str, download: bool) -> nn.Module:
    """One LPIPS network per mode for all sets (it is never registered, so sharing costs nothing)."""
    return build_lpips(mode, download)


@functools.cache
def _shared_pristine(
    path: str | None, url: str | None, sha256: str, search: tuple[str, ...]
) -> tuple[Tensor, Tensor] | NIQEModelError:
    """The pristine model, or the error (cached too: one lookup or download attempt per process)."""
    try:
        return load_pristine_model(path, url, sha256, search)
    except NIQEModelError as err:
        return err


def missing_model_files(
    metrics: Sequence[str],
    lpips: str,
    niqe_model_path: str | None,
    niqe_search_paths: Sequence[str],
    niqe_model_sha256: str,
    on_missing_model: str,
    download: bool,
) -> list[str]:
    """One line per model file that `BenchmarkMetrics` would fail on, each with the override that skips it.

    Lets a CLI refuse before any work: no download is tried here, and missing optional files (Ma's NRQM,
    NIQE under `on_missing_model=unavailable`) are not listed (they become unavailable cells instead).
    """
    wanted, lines = set(metrics), []
    if (
        "lpips" in wanted
        and lpips == "pretrained"
        and not download
        and not alexnet_checkpoint_path().is_file()
    ):
        lines.append(alexnet_missing_message())
    candidates = find_pristine_model(niqe_model_path, niqe_search_paths)
    niqe_needed = wanted & {"niqe", "pi"} and on_missing_model == "error"
    if niqe_needed and not download and not any(c.is_file() for c in candidates):
        rest = ",".join(m for m in metrics if m not in ("niqe", "pi", "ma"))
        lines.append(
            f"{missing_model_message(candidates, niqe_model_sha256)}; or skip NIQE and PI with "
            f"'metrics.benchmark.metrics=[{rest}]' (or list them as unavailable: metrics.on_missing_model=unavailable)"
        )
    return lines


def perceptual_index(ma: float, niqe: float) -> float:
    return ((PI_MA_OFFSET - ma) + niqe) / 2


class BenchmarkMetrics(nn.Module):
    """PSNR/SSIM (Y), LPIPS, NIQE, Ma and PI of one benchmark set.

    `update(sr, hr, names=None)` with `(B, 3, H, W)` float in [0, 1] (sr unrounded: the metrics round to 8 bit
    and crop per protocol); `compute() -> dict[str, float]` over the available metrics; `reset()`;
    `unavailable: dict[str, str]` maps each requested-but-unavailable metric to its reason.
    Pass `names` (the batch's image names) so that images repeated by a distributed sampler count once.
    """

    def __init__(
        self,
        crop_border: int,
        metrics: Sequence[str] = ("psnr", "ssim", "lpips", "niqe", "pi"),
        lpips: str = "pretrained",
        ssim_kernel_size: int = 11,
        ssim_sigma: float = 1.5,
        niqe_convention: str = "pirm",
        niqe_model_path: str | None = None,
        niqe_search_paths: Sequence[str] = (),
        niqe_model_url: str | None = LIVE_MODEL_URL,
        niqe_model_sha256: str = LIVE_MODEL_SHA256,
        niqe_settings: dict | None = None,
        nrqm_model_path: str | None = None,
        on_missing_model: str = "unavailable",
        download: bool = False,
    ) -> None:
        super().__init__()
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"metrics.benchmark.metrics: unknown {unknown}; choose from {METRICS}")
        if on_missing_model not in MISSING_MODEL_POLICIES:
            raise ValueError(
                f"on_missing_model must be one of {MISSING_MODEL_POLICIES}, got {on_missing_model!r}"
            )
        self.crop_border = crop_border
        self.unavailable: dict[str, str] = {}
        self.scores = nn.ModuleDict()
        self._names: dict[int, str] = {}
        wanted = set(metrics)
        if "psnr" in wanted:
            self.scores["psnr"] = PSNRY(crop_border)
        if "ssim" in wanted:
            self.scores["ssim"] = SSIMY(crop_border, ssim_kernel_size, ssim_sigma)
        if "lpips" in wanted and lpips == "disabled":
            self.unavailable["lpips"] = DISABLED_LPIPS
        elif "lpips" in wanted:
            self.scores[lpips_key(lpips)] = LPIPSScore(_shared_lpips(lpips, download))
        if wanted & {"niqe", "pi"}:
            url = niqe_model_url if download else None
            search = tuple(str(p) for p in niqe_search_paths)
            self._add_niqe(
                niqe_convention,
                niqe_model_path,
                url,
                niqe_model_sha256,
                search,
                niqe_settings,
                on_missing_model,
            )
        if wanted & {"ma", "pi"}:
            self._add_ma(nrqm_model_path, download)
        self.want_pi = "pi" in wanted
        if self.want_pi and not {"niqe", "ma"} <= set(self.scores):
            missing = [k for k in ("niqe", "ma") if k not in self.scores]
            their = "its reason" if len(missing) == 1 else "their reasons"
            self.unavailable["pi"] = f"needs {' and '.join(missing)} (unavailable: see {their})"
        for metric, reason in self.unavailable.items():
            if reason != DISABLED_LPIPS:
                warn_once(f"metric '{metric}' unavailable: {reason}")

    def _add_niqe(self, convention, path, url, sha256, search, settings, on_missing) -> None:
        model = _shared_pristine(path, url, sha256, search)
        if isinstance(model, NIQEModelError):
            if on_missing == "error":
                raise model
            self.unavailable["niqe"] = str(model)
            return
        niqe = NIQE(*model, NIQESettings(**(settings or {})))
        self.scores["niqe"] = NIQEScore(niqe, convention, self.crop_border)

    def _add_ma(self, nrqm_model_path, download: bool) -> None:
        nrqm, reason = build_nrqm(self.crop_border, nrqm_model_path, download)
        if nrqm is None:
            self.unavailable["ma"] = str(reason)
        else:
            self.scores["ma"] = MaScore(nrqm)

    def update(self, sr: Tensor, hr: Tensor, names: Sequence[str] | None = None) -> None:
        """Score a batch: `sr`, `hr` `(B, 3, H, W)` float in [0, 1] (same size within the batch)."""
        if names is not None:
            self._names.update({name_key(n): n for n in names})
        for metric in self.scores.values():
            cast(PerImageMetric, metric).update(sr, hr, names)

    def compute(self) -> dict[str, float]:
        """Per-image means over the set (synchronised across ranks)."""
        out = {key: float(cast(PerImageMetric, metric).compute()) for key, metric in self.scores.items()}
        if self.want_pi and "pi" not in self.unavailable:
            out["pi"] = perceptual_index(out["ma"], out["niqe"])
        return out

    def per_image(self) -> dict[str, dict[str, float]]:
        """`{image name: {metric: value}}` of this process's images (single-process evaluation only)."""
        table: dict[str, dict[str, float]] = {}
        for key, metric in self.scores.items():
            assert isinstance(metric, PerImageMetric)
            scores, keys = metric.per_image()
            for value, image_key in zip(scores.tolist(), keys.tolist(), strict=True):
                name = self._names.get(image_key)
                if name is None:
                    raise RuntimeError("per_image() needs the image names: pass names= to update()")
                table.setdefault(name, {})[key] = value
        if self.want_pi and "pi" not in self.unavailable:
            for row in table.values():
                row["pi"] = perceptual_index(row["ma"], row["niqe"])
        return table

    def reset(self) -> None:
        for metric in self.scores.values():
            cast(PerImageMetric, metric).reset()
        self._names.clear()

    def forward(self, sr: Tensor, hr: Tensor, names: Sequence[str] | None = None) -> None:
        """Same as `update` (so that `metrics(sr, hr)` works); returns nothing."""
        self.update(sr, hr, names)
