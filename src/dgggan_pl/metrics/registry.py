"""Every benchmark metric in one place: what it is called, which way is better, where it is shown, how it is built.

A `MetricSpec` is all the project knows about a metric. `BenchmarkMetrics` builds the requested ones from it
(`metrics.benchmark.metrics`), so training logs them as `val/<Set>/<key>`; the W&B callback gives each a best
(`better`) and last summary; `evaluate` puts it in the tables named by its `placements`, `figures` captions its
values and the comparison page formats them, and the ablation `report` prints its `report` placement. Adding a
metric is one `MetricSpec` in the list at the end of this file (or a `register(...)` call in code imported
before the metrics are built, as tests/test_metric_registry.py does); name it in `metrics.benchmark.metrics`.
Its builder gets the `metrics.benchmark` config as `MetricSettings`; keys it needs beyond those go in `options`
(e.g. `+metrics.benchmark.my_window=7`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from torch import Tensor, nn

from dgggan_pl.metrics.fidelity import PSNRY, SSIMY
from dgggan_pl.metrics.niqe import (
    LIVE_MODEL_SHA256,
    LIVE_MODEL_URL,
    NIQE,
    NIQEModelError,
    NIQEScore,
    NIQESettings,
    load_pristine_model,
)
from dgggan_pl.metrics.perceptual import (
    LPIPS_KEY,
    LPIPS_RANDOM_KEY,
    LPIPSScore,
    MaScore,
    build_lpips,
    build_nrqm,
    lpips_key,
)

TABLE3 = "table3_psnr_ssim"  # evaluate's Table 3 (fidelity)
TABLE4 = "table4_pi_lpips"  # evaluate's Table 4 (perception)
REPORT = "report"  # the ablation report's Tables 1 and 2 (`python -m dgggan_pl.report`)
MISSING_MODEL_POLICIES = ("unavailable", "error")  # metrics.on_missing_model: a missing NIQE model's effect
PI_MA_OFFSET = 10.0  # PI = ((10 - Ma) + NIQE) / 2 (Blau et al., PIRM 2018)
DISABLED_LPIPS = "disabled (metrics.lpips=disabled)"
Y_CHANNEL = "on Y (MATLAB rgb2ycbcr), border = scale"  # PSNR's and SSIM's protocol (docs/metrics.md)


class MetricUnavailable(Exception):
    """A builder's reason why its metric cannot be computed here (listed, never reported as a number).

    `warn=False` for a choice the user made (a disabled metric), which is listed but not warned about.
    """

    def __init__(self, reason: str, warn: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.warn = reason, warn


@dataclass(frozen=True)
class MetricSettings:
    """The `metrics.benchmark` config (conf/metrics/default.yaml) every builder receives.

    Its fields are the config's keys, declared once: `BenchmarkMetrics` and `from_config` take them by name.
    """

    crop_border: int
    lpips: str = "pretrained"
    ssim_kernel_size: int = 11
    ssim_sigma: float = 1.5
    niqe_convention: str = "pirm"
    niqe_model_path: str | None = None
    niqe_search_paths: tuple[str, ...] = ()
    niqe_model_url: str | None = LIVE_MODEL_URL
    niqe_model_sha256: str = LIVE_MODEL_SHA256
    niqe_settings: Mapping[str, Any] | None = None
    nrqm_model_path: str | None = None
    on_missing_model: str = "unavailable"
    download: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)  # any other metrics.benchmark key

    def __post_init__(self) -> None:
        if self.on_missing_model not in MISSING_MODEL_POLICIES:
            raise ValueError(
                f"metrics.on_missing_model must be one of {MISSING_MODEL_POLICIES}, got {self.on_missing_model!r}"
            )
        # a list from the config (ListConfig, paths): a tuple of strings, hashable like the rest
        object.__setattr__(self, "niqe_search_paths", tuple(str(p) for p in self.niqe_search_paths))

    @classmethod
    def from_config(cls, crop_border: int, **config: Any) -> MetricSettings:
        """The settings of `metrics.benchmark`'s keys: each field by its name, any other key into `options`."""
        names = {f.name for f in fields(cls)} - {"crop_border", "options"}
        named = {key: value for key, value in config.items() if key in names}
        options = {key: value for key, value in config.items() if key not in names}
        return cls(crop_border, **named, options=options)


@dataclass(frozen=True)
class Placement:
    """A metric's column in one table: `position` orders the columns; `digits` overrides the metric's own."""

    table: str
    position: int
    digits: int | None = None


Builder = Callable[[MetricSettings], nn.Module]


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    key: its name in `metrics.benchmark.metrics` and in the logs (`val/<Set>/<key>`).
    label: its name in figures, on the page and in report titles; `header` overrides it in evaluate's tables.
    caption: how it is measured, as the captions of evaluate's tables print it after the label (metrics that
        share one, side by side, print it once: `PSNR (dB) / SSIM on Y ...`).
    better: `min` (a distance: PI, LPIPS, NIQE) or `max` (PSNR, SSIM, Ma); W&B's best summary and the sorting.
    digits / unit: how a value is printed (`{value:.2f} dB`).
    placements: the tables that show it (TABLE3, TABLE4, REPORT).
    build: `settings -> PerImageMetric`, raising `MetricUnavailable(reason)` when it cannot be computed here.
    needs: metrics computed along with it; `derive` (instead of `build`) computes its value from theirs.
    logged_as: the key its module is logged under when that depends on the settings (a random-backbone LPIPS).
    variant_of: for a key that another metric's `logged_as` produces: the metric it stands in for.
    """

    key: str
    label: str
    better: Literal["min", "max"]
    digits: int
    unit: str = ""
    header: str | None = None
    caption: str = ""
    placements: tuple[Placement, ...] = ()
    build: Builder | None = None
    needs: tuple[str, ...] = ()
    derive: Callable[[Mapping[str, float]], float] | None = None
    logged_as: Callable[[MetricSettings], str] | None = None
    variant_of: str | None = None

    def __post_init__(self) -> None:
        if self.better not in ("min", "max"):
            raise ValueError(f"metric {self.key!r}: better must be 'min' or 'max', got {self.better!r}")

    @property
    def requestable(self) -> bool:
        """Whether `metrics.benchmark.metrics` may name it (a variant is produced by another metric)."""
        return self.variant_of is None

    def logged_key(self, settings: MetricSettings) -> str:
        return self.key if self.logged_as is None else self.logged_as(settings)

    def format(self, value: float, digits: int | None = None) -> str:
        return f"{value:.{self.digits if digits is None else digits}f}" + (
            f" {self.unit}" if self.unit else ""
        )

    def placement(self, table: str) -> Placement | None:
        return next((p for p in self.placements if p.table == table), None)


_REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add a metric (its key must be new); returns it."""
    if spec.key in _REGISTRY:
        raise ValueError(f"metric {spec.key!r} is already registered")
    _REGISTRY[spec.key] = spec
    return spec


def unregister(key: str) -> None:
    """Remove a metric (tests that register a toy one)."""
    del _REGISTRY[key]


def specs() -> tuple[MetricSpec, ...]:
    """Every registered metric, in registration order (the order of columns, captions and log keys)."""
    return tuple(_REGISTRY.values())


def spec(key: str) -> MetricSpec | None:
    return _REGISTRY.get(key)


def requestable_keys() -> tuple[str, ...]:
    return tuple(s.key for s in specs() if s.requestable)


def unknown_metrics_message(requested: Sequence[str], where: str = "metrics.benchmark.metrics") -> str | None:
    """One line naming the unknown keys of `requested` and the known ones, or None when all are known."""
    known = requestable_keys()
    unknown = [key for key in requested if key not in known]
    if not unknown:
        return None
    return f"{where}: unknown {', '.join(map(repr, unknown))}; known metrics: {', '.join(known)}"


def with_needs(requested: Sequence[str]) -> list[str]:
    """`requested` plus what each needs (PI: NIQE and Ma), in registry order."""
    wanted = set(requested)
    for key in requested:
        wanted.update(_REGISTRY[key].needs)
    return [s.key for s in specs() if s.key in wanted]


def table_columns(table: str, present: Sequence[str] = ()) -> list[tuple[MetricSpec, int]]:
    """(spec, digits) of the columns of `table`, in position order; a variant replaces its metric when only the
    variant's key is in `present` (a random-backbone LPIPS gets its own column name)."""
    placed = sorted(
        ((s, p) for s in specs() if s.requestable and (p := s.placement(table))),
        key=lambda sp: sp[1].position,
    )
    columns = []
    for metric, place in placed:
        shown = next(
            (
                v
                for v in specs()
                if v.variant_of == metric.key and v.key in present and metric.key not in present
            ),
            metric,
        )
        columns.append((shown, shown.digits if place.digits is None else place.digits))
    return columns


def displayed(key: str, present: Mapping[str, float]) -> str:
    """The key whose value stands for `key` in `present`: itself, else a variant of it that is there."""
    if key in present:
        return key
    return next((s.key for s in specs() if s.variant_of == key and s.key in present), key)


class _Goals(Mapping[str, str]):
    """`{key: "min" | "max"}` of every registered metric, read live (a metric registered later is in it)."""

    def __getitem__(self, key: str) -> str:
        return _REGISTRY[key].better

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)


GOALS: Mapping[str, str] = _Goals()


# ------------------------------------------------------------------ the paper's metrics (docs/metrics.md)
@functools.cache
def shared_lpips(mode: str, download: bool) -> nn.Module:
    """One LPIPS network per mode for all sets (it is never registered, so sharing costs nothing)."""
    return build_lpips(mode, download)


@functools.cache
def shared_pristine(
    path: str | None, url: str | None, sha256: str, search: tuple[str, ...]
) -> tuple[Tensor, Tensor] | NIQEModelError:
    """The pristine model, or the error (cached too: one lookup or download attempt per process)."""
    try:
        return load_pristine_model(path, url, sha256, search)
    except NIQEModelError as err:
        return err


def _lpips(settings: MetricSettings) -> nn.Module:
    if settings.lpips == "disabled":
        raise MetricUnavailable(DISABLED_LPIPS, warn=False)
    return LPIPSScore(shared_lpips(settings.lpips, settings.download))


def _niqe(settings: MetricSettings) -> nn.Module:
    url = settings.niqe_model_url if settings.download else None
    search = tuple(str(p) for p in settings.niqe_search_paths)
    model = shared_pristine(settings.niqe_model_path, url, settings.niqe_model_sha256, search)
    if isinstance(model, NIQEModelError):
        if settings.on_missing_model == "error":
            raise model
        raise MetricUnavailable(str(model))
    niqe = NIQE(*model, NIQESettings(**(settings.niqe_settings or {})))
    return NIQEScore(niqe, settings.niqe_convention, settings.crop_border)


def _ma(settings: MetricSettings) -> nn.Module:
    nrqm, reason = build_nrqm(settings.crop_border, settings.nrqm_model_path, settings.download)
    if nrqm is None:
        raise MetricUnavailable(str(reason))
    return MaScore(nrqm)


def perceptual_index(ma: float, niqe: float) -> float:
    return ((PI_MA_OFFSET - ma) + niqe) / 2


for _spec in (
    MetricSpec(
        "psnr",
        "PSNR",
        "max",
        2,
        unit="dB",
        caption=Y_CHANNEL,
        placements=(Placement(TABLE3, 0), Placement(REPORT, 2)),
        build=lambda s: PSNRY(s.crop_border),
    ),
    MetricSpec(
        "ssim",
        "SSIM",
        "max",
        4,
        caption=Y_CHANNEL,
        placements=(Placement(TABLE3, 1),),
        build=lambda s: SSIMY(s.crop_border, s.ssim_kernel_size, s.ssim_sigma),
    ),
    MetricSpec(
        LPIPS_KEY,
        "LPIPS",
        "min",
        4,
        caption="(AlexNet v0.1)",
        placements=(Placement(TABLE4, 1),),
        build=_lpips,
        logged_as=lambda settings: lpips_key(settings.lpips),
    ),
    MetricSpec(
        LPIPS_RANDOM_KEY,
        "LPIPS(random)",
        "min",
        4,
        header="LPIPS (RANDOM backbone, test only)",
        caption="(AlexNet with RANDOM weights: tests only)",
        variant_of=LPIPS_KEY,
    ),
    MetricSpec(
        "niqe",
        "NIQE",
        "min",
        3,
        caption="(PIRM convention)",
        placements=(Placement(TABLE4, 2), Placement(REPORT, 1, digits=4)),
        build=_niqe,
    ),
    MetricSpec("ma", "Ma", "max", 3, caption="(NRQM, Ma et al. 2017)", build=_ma),
    MetricSpec(
        "pi",
        "PI",
        "min",
        3,
        caption=f"= (({PI_MA_OFFSET:g} - Ma) + NIQE) / 2 (PIRM 2018)",
        placements=(Placement(TABLE4, 0), Placement(REPORT, 0, digits=4)),  # the report prints the paper's 4
        needs=("niqe", "ma"),
        derive=lambda v: perceptual_index(v["ma"], v["niqe"]),
    ),
):
    register(_spec)
