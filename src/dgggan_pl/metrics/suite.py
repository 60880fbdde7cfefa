"""All metrics of one benchmark set, as the training module and `dgggan_pl.evaluate` use them.

`BenchmarkMetrics` is built from `cfg.metrics.benchmark` (a `_partial_` config) once per benchmark set.
Metrics whose external files are missing are either an error (LPIPS `pretrained`; NIQE when
`on_missing_model=error`, as `evaluate` sets it) or listed in `unavailable` with the reason, logged once per
process - never reported as a number. Nothing is downloaded unless `download=True` (`metrics.download`): the
demo and tests make no network attempt. A disabled metric is listed too, as "disabled (metrics.X=disabled)".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor, nn

from dgggan_pl.metrics.niqe import find_pristine_model, missing_model_message
from dgggan_pl.metrics.per_image import PerImageMetric, name_key
from dgggan_pl.metrics.perceptual import alexnet_checkpoint_path, alexnet_missing_message
from dgggan_pl.metrics.registry import (
    DISABLED_LPIPS,
    MetricSettings,
    MetricSpec,
    MetricUnavailable,
    requestable_keys,
    shared_lpips,
    spec,
    unknown_metrics_message,
    with_needs,
)

METRICS = requestable_keys()  # the paper's protocol: psnr, ssim, lpips, niqe, ma, pi (metrics/registry.py)
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "niqe", "pi")  # Tables 3 and 4 (pi implies ma)
log = logging.getLogger(__name__)
_warned: set[str] = set()
_shared_lpips = shared_lpips  # tests clear its cache to see the random-backbone warning again


def warn_once(message: str) -> None:
    """Log a missing metric once per process, not once per benchmark set or validation epoch."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


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


class BenchmarkMetrics(nn.Module):
    """The requested metrics (metrics/registry.py) of one benchmark set: PSNR/SSIM (Y), LPIPS, NIQE, Ma and PI.

    `update(sr, hr, names=None)` with `(B, 3, H, W)` float in [0, 1] (sr unrounded: the metrics round to 8 bit
    and crop per protocol); `compute() -> dict[str, float]` over the available metrics; `reset()`;
    `unavailable: dict[str, str]` maps each requested-but-unavailable metric to its reason.
    Pass `names` (the batch's image names) so that images repeated by a distributed sampler count once.
    `settings` are the other keys of `metrics.benchmark`: the fields of `MetricSettings` (declared there, with
    their defaults), and any further key, which reaches the builders as `MetricSettings.options`.
    """

    def __init__(self, crop_border: int, metrics: Sequence[str] = DEFAULT_METRICS, **settings: Any) -> None:
        super().__init__()
        unknown = unknown_metrics_message(list(metrics))
        if unknown:
            raise ValueError(unknown)
        self.settings = MetricSettings.from_config(crop_border, **settings)
        self.unavailable: dict[str, str] = {}
        self.scores = nn.ModuleDict()
        self._names: dict[int, str] = {}
        self.derived = [key for key in with_needs(list(metrics)) if self._build(key, self.settings)]
        for metric, reason in self.unavailable.items():
            if reason != DISABLED_LPIPS:
                warn_once(f"metric '{metric}' unavailable: {reason}")

    def _build(self, key: str, settings: MetricSettings) -> bool:
        """Add metric `key`'s module (or its reason to `unavailable`); True for a derived metric available here."""
        metric = spec(key)
        assert metric is not None
        if metric.derive is not None:
            missing = [k for k in metric.needs if k not in self.scores]
            if not missing:
                return True
            their = "its reason" if len(missing) == 1 else "their reasons"
            self.unavailable[key] = f"needs {' and '.join(missing)} (unavailable: see {their})"
            return False
        assert metric.build is not None, f"metric {key!r} has neither build nor derive"
        try:
            self.scores[metric.logged_key(settings)] = metric.build(settings)
        except MetricUnavailable as reason:
            self.unavailable[key] = reason.reason
        return False

    def _with_derived(self, values: dict[str, float]) -> dict[str, float]:
        for key in self.derived:
            derive = cast(MetricSpec, spec(key)).derive
            assert derive is not None
            values[key] = derive(values)
        return values

    def update(self, sr: Tensor, hr: Tensor, names: Sequence[str] | None = None) -> None:
        """Score a batch: `sr`, `hr` `(B, 3, H, W)` float in [0, 1] (same size within the batch)."""
        if names is not None:
            self._names.update({name_key(n): n for n in names})
        for metric in self.scores.values():
            cast(PerImageMetric, metric).update(sr, hr, names)

    def compute(self) -> dict[str, float]:
        """Per-image means over the set (synchronised across ranks)."""
        return self._with_derived(
            {key: float(cast(PerImageMetric, metric).compute()) for key, metric in self.scores.items()}
        )

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
        return {name: self._with_derived(row) for name, row in table.items()}

    def reset(self) -> None:
        for metric in self.scores.values():
            cast(PerImageMetric, metric).reset()
        self._names.clear()

    def forward(self, sr: Tensor, hr: Tensor, names: Sequence[str] | None = None) -> None:
        """Same as `update` (so that `metrics(sr, hr)` works); returns nothing."""
        self.update(sr, hr, names)
