"""W&B dashboard for PI/LPIPS tracking: `python -m dgggan_pl.dashboard --entity E --project P [--group G]`.

Saves a W&B workspace (sections Perception, Fidelity, Test, Training, Images; runs grouped by W&B group and
told apart by ablation; a runs table of best values) and, for a sweep group, a report laying out the paper's
Tables 1 and 2. `--dry-run DIR` writes both specs as JSON instead and touches no network. The benchmark metrics
come from the registry (metrics/registry.py: a section plots the metrics placed in one of evaluate's tables, the
report those placed in the ablation report), the sets and the other keys from `conf/dashboard.yaml` (override as
KEY=VALUE); `callbacks.wandb_metrics` defines them in every run (x-axis, best/last summaries, the `ablation`
config key, GFLOPs). Needs the optional extra `dashboard` (wandb-workspaces).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig

from dgggan_pl.callbacks.wandb_metrics import ABLATION_KEY, GFLOPS_KEY, GOALS
from dgggan_pl.config import compose_config
from dgggan_pl.metrics import registry
from dgggan_pl.metrics.keys import benchmark_key
from dgggan_pl.metrics.registry import REPORT, MetricSettings, MetricSpec, table_columns
from dgggan_pl.report import TABLE1_ROWS, TABLE2_ROWS
from dgggan_pl.utils.atomic import write_text_atomic

INSTALL_HINT = "W&B dashboards need the optional extra `dashboard` (wandb-workspaces): pip install 'dgggan-pl[dashboard]'"
WORKSPACE_FILE, REPORT_FILE = "workspace.json", "report.json"
PARAMS_KEY = "model/generator_params"  # summary written by dgggan_pl.train
DERIVED_NOTE = (  # a section's note on each metric computed from others (PI from NIQE and Ma)
    "**{label}** {caption} appears only where the run could compute {needs} (docs/metrics.md says what each "
    "needs). Otherwise its panels stay empty, the other metrics still show, and the run records why "
    "(`metrics_unavailable` in run_info.json)."
)


class MissingExtraError(ImportError):
    """wandb-workspaces is not installed."""


def load_ui() -> tuple[ModuleType, ModuleType]:
    """(`wandb_workspaces.workspaces`, `wandb_workspaces.reports.v2`), or a one-line error on how to install."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as err:
        raise MissingExtraError(INSTALL_HINT) from err
    return ws, wr


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    return compose_config(list(overrides), config_name="dashboard")


def placed_metrics(table: str) -> list[MetricSpec]:
    """The metrics placed in `table` (metrics/registry.py), in its column order: registering a metric with a
    placement there gives it its panels and columns, with no change to conf/dashboard.yaml."""
    return [metric for metric, _ in table_columns(table)]


def logged_name(cfg: DictConfig, metric: MetricSpec) -> str:
    """The name runs with `cfg.lpips` log `metric` under (a random-backbone LPIPS is `lpips_random_backbone`).

    Names depend on the settings' LPIPS mode only; the crop border changes values, not names."""
    return metric.logged_key(MetricSettings(crop_border=0, lpips=cfg.lpips))


def section_metrics(cfg: DictConfig) -> dict[str, list[str]]:
    """Section name -> the logged names of the metrics placed in its table (`cfg.sections`)."""
    return {
        name: [logged_name(cfg, metric) for metric in placed_metrics(table)]
        for name, table in cfg.sections.items()
    }


def summary_columns(cfg: DictConfig) -> list[str]:
    """Runs-table columns: the ablation, best validation values, the selected checkpoint's test values."""
    columns = [f"config:{ABLATION_KEY}.value"]
    for name in (name for names in section_metrics(cfg).values() for name in names):
        columns += [f"summary:{benchmark_key('val', s, name)}.{GOALS[name]}" for s in cfg.val_sets]
    for name in (logged_name(cfg, metric) for metric in placed_metrics(cfg.runs_table)):
        columns += [f"summary:{benchmark_key('test', s, name)}.last" for s in cfg.test_sets]
    return columns


def derived_notes(table: str) -> list[str]:
    """A note per metric of `table` computed from others, naming what it needs."""
    notes = []
    for metric in placed_metrics(table):
        parts = [registry.spec(key) for key in metric.needs]
        needs = " and ".join(part.label for part in parts if part is not None)
        if needs:
            notes.append(DERIVED_NOTE.format(label=metric.label, caption=metric.caption, needs=needs))
    return notes


def _section(ws: ModuleType, cfg: DictConfig, name: str, panels: list[Any]) -> Any:
    rows = max(1, math.ceil(len(panels) / cfg.panel_columns))
    layout = ws.SectionLayoutSettings(columns=cfg.panel_columns, rows=rows)
    return ws.Section(name=name, panels=panels, is_open=True, layout_settings=layout)


def build_workspace(cfg: DictConfig, entity: str, project: str, group: str | None = None) -> Any:
    """The saved view: validation curves per benchmark, test bars, training terms, image panels."""
    ws, wr = load_ui()
    step = cfg.step_metric

    def curves(names: Sequence[str]) -> list[Any]:
        return [
            wr.LinePlot(title=f"{name} {s}", x=step, y=[benchmark_key("val", s, name)])
            for name in names
            for s in cfg.val_sets
        ]

    by_section = section_metrics(cfg)
    test_bars = [
        wr.BarPlot(title=f"{name} {s} (test)", metrics=[benchmark_key("test", s, name)], orientation="v")
        for names in by_section.values()
        for name in names
        for s in cfg.test_sets
    ]
    training = [wr.LinePlot(title=panel.title, x=step, y=list(panel["keys"])) for panel in cfg.training]
    images = [wr.MediaBrowser(title="Validation panels", media_keys=list(cfg.images), gallery_axis="step")]
    sections = [
        _section(
            ws,
            cfg,
            name,
            [*curves(names), *(wr.MarkdownPanel(markdown=n) for n in derived_notes(cfg.sections[name]))],
        )
        for name, names in by_section.items()
    ]
    sections += [
        _section(ws, cfg, "Test (selected checkpoint)", test_bars),
        _section(ws, cfg, "Training", training),
        _section(ws, cfg, "Images", images),
    ]
    runsets = ws.RunsetSettings(
        filters=ws.And(ws.Metric("Group") == group) if group else "",
        groupby=[ws.Metric("Group"), ws.Config(ABLATION_KEY)],
        pinned_columns=summary_columns(cfg),
    )
    name = f"{cfg.name}: {group}" if group else cfg.name
    settings = ws.WorkspaceSettings(x_axis=step)
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=sections,
        settings=settings,
        runset_settings=runsets,
    )


def _table_grid(wr: ModuleType, ws: ModuleType, group: str, rows: Any, keys: list[str]) -> Any:
    """A panel grid of one ablation table: one bar per ablation (mean over seeds, min-max range) per key.

    The run set names no entity/project: it reads the report's own project (and building it needs no network).
    """
    ablations = [ablation for _, ablation in rows]
    runset = wr.Runset(
        name=f"{group}: {' vs '.join(ablations)}",
        # logger.wandb.tags carries the ablation name; run-attribute filters need no config path
        filters=ws.And(ws.Metric("Group") == group, ws.Tags().isin(ablations)),
        groupby=[f"config.{ABLATION_KEY}"],
    )
    panels = [
        wr.BarPlot(
            title=key,
            metrics=[key],
            groupby=wr.Config(ABLATION_KEY),
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            orientation="v",
        )
        for key in keys
    ]
    return wr.PanelGrid(runsets=[runset], panels=panels)


def _row_legend(rows: Any) -> str:
    return ", ".join(f"{label} = `ablation={ablation}`" for label, ablation in rows)


def build_report(cfg: DictConfig, entity: str, project: str, group: str) -> Any:
    """Tables 1 and 2 of the paper from the runs of one sweep group (the test metrics of each job's
    selected checkpoint, as `python -m dgggan_pl.report` tabulates them from the sweep folder)."""
    ws, wr = load_ui()
    metrics = [logged_name(cfg, metric) for metric in placed_metrics(REPORT)]
    table1 = [benchmark_key("test", s, m) for m in metrics for s in cfg.test_sets]
    table2 = [benchmark_key("test", cfg.table2_set, m) for m in metrics] + [GFLOPS_KEY, PARAMS_KEY]
    blocks = [
        wr.P(
            text=f"Sweep group `{group}`. Bars: mean over the group's runs of each ablation (range: min to max), "
            "of the checkpoint selected on validation; PI needs the `pi` extra and the Ma model."
        ),
        wr.H2(text="Table 1. Gradient branch validity verification"),
        wr.P(text=f"Gradient branch: {_row_legend(TABLE1_ROWS)}."),
        _table_grid(wr, ws, group, TABLE1_ROWS, table1),
        wr.H2(text=f"Table 2. Results of validation of the SE block ({cfg.table2_set})"),
        wr.P(
            text=f"SE block: {_row_legend(TABLE2_ROWS)}. GFLOPs of the generator at the paper's LR patch size."
        ),
        _table_grid(wr, ws, group, TABLE2_ROWS, table2),
    ]
    return wr.Report(entity=entity, project=project, title=cfg.report_title, blocks=blocks)


def spec(view: Any) -> dict[str, Any]:
    """The JSON the W&B API receives for a workspace or report (what `save()` sends)."""
    return json.loads(view._to_model().model_dump_json(by_alias=True, exclude_none=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dgggan_pl.dashboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--entity", required=True, help="W&B entity (user or team) owning the project")
    parser.add_argument("--project", required=True, help="W&B project of the runs (logger.wandb.project)")
    parser.add_argument(
        "--group", default=None, help="W&B group of a sweep (logger.wandb.group); adds the report"
    )
    parser.add_argument(
        "--dry-run", type=Path, default=None, metavar="DIR", help="write the specs as JSON only"
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of conf/dashboard.yaml")
    args = parser.parse_args(argv)
    try:
        load_ui()
    except MissingExtraError as err:
        parser.exit(2, f"error: {err}\n")
    cfg = load_config(args.overrides)
    views = {WORKSPACE_FILE: build_workspace(cfg, args.entity, args.project, args.group)}
    if args.group:
        views[REPORT_FILE] = build_report(cfg, args.entity, args.project, args.group)
    if args.dry_run is not None:
        for name, view in views.items():
            write_text_atomic(args.dry_run / name, json.dumps(spec(view), indent=1) + "\n")
        sys.stdout.write(f"Written (no network): {', '.join(str(args.dry_run / n) for n in views)}\n")
        return
    _save(parser, views)


def _save(parser: argparse.ArgumentParser, views: dict[str, Any]) -> None:
    import wandb

    for view in views.values():
        try:
            view.save()
        except (wandb.errors.Error, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            parser.exit(
                1,
                f"error: saving to W&B failed ({reason}); run `wandb login` or set WANDB_API_KEY, "
                "or write the specs offline with --dry-run DIR\n",
            )
        sys.stdout.write(f"{view.url}\n")


if __name__ == "__main__":
    main()
