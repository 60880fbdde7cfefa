"""The W&B dashboard against a REAL offline run: every key its panels and columns name is one training logs.

One smoke GAN training (experiment=full debug=smoke, logger=wandb, WANDB_MODE=offline) is shared by the
module; its `.wandb` file is parsed with tests/test_wandb.py's reader. The dashboard specs come from
`python -m dgggan_pl.dashboard --dry-run`, with the network cut off (wandb.Api raises).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dgggan_pl import dashboard
from dgggan_pl.callbacks.wandb_metrics import ABLATION_KEY, GFLOPS_KEY, GOALS
from dgggan_pl.config import compose_config
from dgggan_pl.metrics.perceptual import LPIPS_RANDOM_KEY
from dgggan_pl.metrics.suite import METRICS
from dgggan_pl.train import train

pytest.importorskip("wandb_workspaces", reason="the optional extra `dashboard` (wandb-workspaces)")
wandb_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")
from test_wandb import read_records  # noqa: E402  (the one .wandb reader of the test suite)

STEP = "trainer/iteration"
BENCHMARK_KEY = re.compile(r"^(val|test)/([^/]+)/([^/]+)$")
# The run's sets and LPIPS mode, as the dashboard is told (KEY=VALUE overrides of conf/dashboard.yaml)
DASHBOARD_OVERRIDES = ["val_sets=[Sample]", "test_sets=[Sample]", "lpips=random", "table2_set=Sample"]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What a `.wandb` file holds: history rows, metric definitions, the last summary, config, tags."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # name or glob -> MetricRecord (the last one)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # run_info.json's metrics_unavailable

    @property
    def history(self) -> set[str]:
        return {key for row in self.rows for key in row}

    @property
    def benchmark_keys(self) -> set[str]:
        """Logged `val|test/<Set>/<metric>` scalars (media such as `val/panels/<field>` excluded)."""
        media = {key.removesuffix("/_type") for key in self.history if key.endswith("/_type")}
        return {k for k in self.history if BENCHMARK_KEY.match(k) and k.rsplit("/", 1)[0] not in media}

    def values(self, key: str) -> list[float]:
        return [row[key] for row in self.rows if key in row]


def parse_run(run_file: Path) -> OfflineRun:
    run = OfflineRun()
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.rows.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "metric":
            run.metrics[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "summary":
            run.summary |= {_key(item): json.loads(item.value_json) for item in record.summary.update}
        elif kind == "config":
            run.config |= {_key(item): json.loads(item.value_json) for item in record.config.update}
        elif kind == "run":
            run.tags = list(record.run.tags)
    return run


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, data_dir) -> OfflineRun:
    """A 4-iteration GAN run on the sample set (2 validations, 1 test), logged offline to W&B."""
    out = tmp_path_factory.mktemp("run")
    niqe_model = data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat"
    overrides = ["experiment=full", "debug=smoke", "logger=wandb", f"paths.output_dir={out}"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        train(compose_config([*overrides, f"metrics.niqe_model_path={niqe_model}"]))
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    run = parse_run(run_file)
    run.unavailable = json.loads((out / "run_info.json").read_text())["metrics_unavailable"]
    return run


@pytest.fixture(scope="module")
def specs(offline_run, tmp_path_factory) -> dict[str, dict]:
    """`--dry-run` specs for the run's sets; any W&B API call (network) fails the test."""
    import wandb

    out = tmp_path_factory.mktemp("dry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("--dry-run called the W&B API"))
        args = ["--entity", "e", "--project", "p", "--group", "g", "--dry-run", str(out)]
        dashboard.main([*args, *DASHBOARD_OVERRIDES])
    return {
        name: json.loads((out / name).read_text())
        for name in (dashboard.WORKSPACE_FILE, dashboard.REPORT_FILE)
    }


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def panels(spec: dict) -> list[dict]:
    return [node for node in _walk(spec) if "viewType" in node and "config" in node]


def runsets(spec: dict) -> list[dict]:
    return [node for node in _walk(spec) if "runFeed" in node]


def test_run_defines_iteration_axis_and_best_and_last_summaries(offline_run) -> None:
    run = offline_run
    # the iteration is the x-axis of every key, replacing Lightning's trainer/global_step
    assert run.metrics["*"].step_metric == STEP and run.metrics["*"].options.step_sync
    logged = sorted(run.benchmark_keys)
    assert {
        "val/Sample/psnr",
        "val/Sample/niqe",
        f"val/Sample/{LPIPS_RANDOM_KEY}",
        "test/Sample/psnr",
    } <= set(logged)
    for key in logged:
        metric = run.metrics[key]
        goal = GOALS[key.rsplit("/", 1)[1]]
        assert metric.step_metric == STEP and metric.options.step_sync, key
        kept = {name for name in ("min", "max", "last", "mean", "first") if getattr(metric.summary, name)}
        assert kept == {goal, "last"}, key
        values = run.values(key)
        best = min(values) if goal == "min" else max(values)
        assert run.summary[key] == {goal: best, "last": values[-1]}, key
    assert len(run.values("val/Sample/psnr")) == 2  # two validations: best and last are both real choices
    # every training, validation and test row carries the iteration count (the contract with the runs code)
    for row in run.rows:
        if any(k.startswith(("train/", "val/", "test/")) for k in row):
            assert STEP in row, sorted(row)
    assert run.config[ABLATION_KEY] == "none" and "none" in run.tags
    assert run.summary[GFLOPS_KEY] > 0


def test_dry_run_panels_name_only_keys_the_run_logs(offline_run, specs) -> None:
    run, missing = offline_run, set()
    workspace, report = specs[dashboard.WORKSPACE_FILE], specs[dashboard.REPORT_FILE]
    assert workspace["spec"]["section"]["settings"]["xAxis"] == STEP
    for panel in panels(workspace) + panels(report):
        config = panel["config"]
        if panel["viewType"] == "Run History Line Plot":
            assert config["xAxis"] in run.history
        for key in config.get("metrics", []):
            history_only = panel["viewType"] == "Run History Line Plot"
            if key in run.history or (not history_only and key in run.summary):
                continue
            match = BENCHMARK_KEY.match(key)
            assert match and match.group(3) in run.unavailable, f"{panel['viewType']} names unlogged {key}"
            missing.add(match.group(3))
        for key in config.get("mediaKeys", []):
            assert f"{key}/_type" in run.history, key
    assert missing == {"pi"}  # PI alone, unavailable without the Ma model; its reason is in the run record
    assert {p["viewType"] for p in panels(workspace)} >= {
        "Run History Line Plot",
        "Bar Chart",
        "Media Browser",
    }

    for runset in runsets(workspace) + runsets(report):
        for column in runset["runFeed"]["columnOrder"]:
            section, _, name = column.partition(":")
            if section == "summary":
                key, goal = name.rsplit(".", 1)
                metric = BENCHMARK_KEY.match(key).group(3)
                assert goal in run.summary[key] if metric not in run.unavailable else metric == "pi", column
            elif section == "config":
                assert name.removesuffix(".value") in run.config, column
        for group in runset["grouping"]:
            if group["section"] == "config":
                assert group["name"].split(".")[0] in run.config, group
        for condition in runset["filters"]["filters"]:
            if condition["key"]["name"] == "tags":  # rows of a table are picked by the ablation tag
                assert run.config[ABLATION_KEY] in run.tags


def test_training_section_shows_every_logged_training_term(offline_run, specs) -> None:
    """Generator terms, critic estimates and penalties, learning rate: all of them, under their logged names."""
    shown = {
        key for panel in panels(specs[dashboard.WORKSPACE_FILE]) for key in panel["config"].get("metrics", [])
    }
    terms = {key for key in offline_run.history if key.startswith("train/") and key != "train/iteration"}
    assert len(terms) >= 10 and terms <= shown, sorted(terms - shown)


def test_report_lays_out_both_tables_from_the_group(specs) -> None:
    report = specs[dashboard.REPORT_FILE]
    headings = [b["children"][0]["text"] for b in report["spec"]["blocks"] if b["type"] == "heading"]
    assert [h.split(".")[0] for h in headings] == ["Table 1", "Table 2"]
    (table1, table2) = [b for b in report["spec"]["blocks"] if b["type"] == "panel-grid"]
    for grid, ablations in ((table1, ["no_grad", "none"]), (table2, ["no_se", "none"])):
        (runset,) = grid["metadata"]["runSets"]
        filters = {c["key"]["name"]: c["value"] for c in runset["filters"]["filters"]}
        assert filters == {"group": "g", "tags": ablations}
        assert all(p["config"]["groupBy"] == f"{ABLATION_KEY}.value" for p in panels(grid))
    assert {m for p in panels(table2) for m in p["config"]["metrics"]} >= {"test/Sample/pi", GFLOPS_KEY}


def test_every_benchmark_metric_has_a_goal() -> None:
    assert set(METRICS) | {LPIPS_RANDOM_KEY} <= set(GOALS)


def test_without_the_extra_one_line_says_how_to_install(monkeypatch, capsys, tmp_path) -> None:
    for name in [m for m in sys.modules if m.startswith("wandb_workspaces")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import fails as when not installed
    with pytest.raises(SystemExit) as exit_info:
        dashboard.main(["--entity", "e", "--project", "p", "--dry-run", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "pip install 'dgggan-pl[dashboard]'" in message
    assert not list(tmp_path.iterdir())
