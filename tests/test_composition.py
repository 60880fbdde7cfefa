"""Config composition cannot silently override an experiment (docs/design.md#composition-order).

The values to check are read from the experiment and ablation YAML files themselves, so a new experiment or
ablation is covered without editing this file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.config import config_dir

CONF = config_dir()
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
ABLATIONS = sorted(path.stem for path in (CONF / "ablation").glob("*.yaml"))
_MISSING = object()


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested mapping; lists and scalars are leaves."""
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _file_values(path: Path) -> dict[str, Any]:
    """The values a `# @package _global_` config file sets (its defaults list aside), uninterpolated."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(raw, dict)
    raw.pop("defaults", None)
    return dict(_leaves(raw))


def _group_overrides(path: Path) -> dict[str, str]:
    """`override /model: dgggan_lite` entries of a config file's defaults list -> {"model": "dgggan_lite"}."""
    entries = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])  # type: ignore[union-attr]
    choices: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict):
            for key, option in entry.items():
                choices[key.removeprefix("override").strip().lstrip("/")] = option
    return choices


def _compose(conf: Path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _raw(cfg: DictConfig, key: str) -> Any:
    """The composed value at a dotted key, interpolations unresolved (as the files write them)."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _expected(experiment: dict[str, Any], ablation: dict[str, Any]) -> dict[str, Any]:
    """What composition must give: the experiment's values, except where the named ablation sets the key
    (or a node above it, which replaces the experiment's subtree)."""
    expected = dict(ablation)
    for key, value in experiment.items():
        parts = key.split(".")
        replaced = any(".".join(parts[:n]) in ablation for n in range(1, len(parts) + 1))
        below = any(other.startswith(key + ".") for other in ablation)
        if not (replaced or below):
            expected[key] = value
    return expected


def _assert_survives(conf: Path, experiment: str, ablation: str | None) -> None:
    overrides = [f"experiment={experiment}"] + ([f"ablation={ablation}"] if ablation else [])
    cfg = _compose(conf, overrides)
    experiment_file = conf / "experiment" / f"{experiment}.yaml"
    ablation_values = _file_values(conf / "ablation" / f"{ablation}.yaml") if ablation else {}
    expected = _expected(_file_values(experiment_file), ablation_values)
    wrong = {key: (value, _raw(cfg, key)) for key, value in expected.items() if _raw(cfg, key) != value}
    assert not wrong, f"{overrides}: {{key: (set in the file, composed)}} = {wrong}"
    choices = cfg.hydra.runtime.choices
    for group, option in _group_overrides(experiment_file).items():
        assert choices[group] == option, f"{overrides}: group {group} is {choices[group]}, not {option}"


@pytest.mark.parametrize("ablation", [None, *ABLATIONS])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_value_survives_composition(experiment: str, ablation: str | None) -> None:
    _assert_survives(CONF, experiment, ablation)


def test_ablations_set_only_what_defines_them() -> None:
    """The default ablation (`none`) sets nothing but its name: any other value would override experiments."""
    assert _file_values(CONF / "ablation" / "none.yaml") == {"ablation.name": "none"}
    for name in ABLATIONS:
        assert _file_values(CONF / "ablation" / f"{name}.yaml")["ablation.name"] == name


def test_an_experiment_that_changes_the_generator_keeps_its_values(tmp_path: Path) -> None:
    """The reproduced bug: an experiment with `use_se: false` (or no gradient branch) came out true, because
    the ablation group (default `none`) composes after it. A probe experiment in a copy of conf/ checks it."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    probe = {
        "model": {"generator": {"use_se": False, "use_gradient_branch": False, "channels": 16}},
        "task_name": "probe",
    }
    (conf / "experiment" / "probe.yaml").write_text("# @package _global_\n" + OmegaConf.to_yaml(probe))
    for ablation in [None, *ABLATIONS]:
        _assert_survives(conf, "probe", ablation)
    cfg = _compose(conf, ["experiment=probe"])
    assert cfg.model.generator.use_se is False and cfg.model.generator.use_gradient_branch is False


# --- conf/debug/: run modifiers composed last (docs/design.md#debug-configs) --------------------------------

DEBUGS = sorted(path.stem for path in (CONF / "debug").glob("*.yaml"))
SMOKE_TESTED = {"overfit", "limit", "profiler", "anomaly"}  # each smoke-run below; `smoke` is run everywhere


def _debug_run(tmp_path: Path, experiment: str, debug: str, *overrides: str) -> Path:
    from dgggan_pl.config import compose_config
    from dgggan_pl.train import train

    cfg = compose_config(
        [
            f"experiment={experiment}",
            f"debug=[smoke,{debug}]",
            "logger=csv",
            f"paths.output_dir={tmp_path}",
            *overrides,
        ]
    )
    train(cfg)
    return tmp_path


def _train_rows(output_dir: Path, key: str) -> list[float]:
    import csv

    (metrics_file,) = output_dir.glob("csv/version_*/metrics.csv")
    with metrics_file.open() as file:
        return [float(row[key]) for row in csv.DictReader(file) if row.get(key)]


def test_every_debug_config_is_smoke_run() -> None:
    assert set(DEBUGS) - {"smoke"} == SMOKE_TESTED


@pytest.mark.usefixtures("one_torch_thread")
def test_overfit_repeats_the_same_batches_and_the_loss_falls(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from dgggan_pl.config import compose_config

    cfg = compose_config(["experiment=pretrain", "debug=[smoke,overfit]", f"paths.output_dir={tmp_path}"])
    datamodule = instantiate(cfg.data)
    datamodule.trainer = instantiate(cfg.trainer, max_steps=1, logger=False, enable_checkpointing=False)
    loader = datamodule.train_dataloader()
    first, second = ([batch["hr"] for batch in loader] for _ in range(2))
    assert len(first) == len(second) > 1 and all(a.equal(b) for a, b in zip(first, second, strict=True))

    losses = _train_rows(_debug_run(tmp_path, "pretrain", "overfit", "iterations=6"), "train/loss_pixel")
    assert len(losses) == 6  # overfit_batches=2: iterations 1, 3, 5 see batch 1 and 2, 4, 6 batch 2
    assert losses[4] < losses[2] < losses[0] and losses[5] < losses[3] < losses[1]


@pytest.mark.usefixtures("one_torch_thread")
def test_limit_shortens_epochs_and_evaluation(tmp_path: Path) -> None:
    import torch

    output_dir = _debug_run(
        tmp_path,
        "pretrain",
        "limit",
        "iterations=6",
        "trainer.limit_train_batches=2",
        "trainer.val_check_interval=3",
    )
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert checkpoint["epoch"] >= 2  # 2 batches per epoch instead of smoke's 4


@pytest.mark.usefixtures("one_torch_thread")
def test_profiler_writes_its_report_into_the_run_folder(tmp_path: Path) -> None:
    output_dir = _debug_run(tmp_path, "full", "profiler", "iterations=2")
    report = (output_dir / "fit-profile.txt").read_text()
    assert "training_step" in report


@pytest.mark.usefixtures("one_torch_thread")
def test_anomaly_detection_is_on_and_a_gan_run_passes_it(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from dgggan_pl.config import compose_config

    cfg = compose_config(
        ["experiment=full", "debug=[smoke,anomaly]", f"paths.output_dir={tmp_path / 'composed'}"]
    )
    assert instantiate(cfg.trainer, max_steps=1, logger=False)._detect_anomaly is True
    output_dir = _debug_run(
        tmp_path, "full", "anomaly", "iterations=2"
    )  # the double-backward penalty included
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
