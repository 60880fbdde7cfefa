"""Loss presets per stage (conf/loss/): each names its terms once (`loss.active`), runs exactly them, and no term
joins a stage unasked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dgggan_pl.config import CONFIG_DIR_ENV, compose_config, config_dir
from dgggan_pl.objective import ObjectiveSpec
from test_objective import WEIGHTS as PAPER_WEIGHTS  # eq. 7's weights, stated once

PRETRAIN = {"pixel": 1.0, "grad_branch": 0.5}  # the PSNR stage: alpha = 1, eta = 0.5
# `make demo` before the presets existed (experiment/demo.yaml listed these six by hand): theta = 0,
# alpha = 1, the paper's mu and eta, gentle beta = eps = 0.001
DEMO = {"pixel": 1.0, "grad_img": 0.01, "adv": 0.001, "adv_grad": 0.001, "grad_branch": 0.5}
ACTIVE = {"full": PAPER_WEIGHTS, "pretrain": PRETRAIN, "demo": DEMO}
NO_GRAD_OFF = {"grad_img", "adv_grad", "grad_branch"}  # ablation=no_grad: mu = eps = eta = 0
NEW_TERM = {"weight": 0.1, "input": "sr", "loss": {"_target_": "torch.nn.MSELoss"}}


def active_terms(*overrides: str) -> dict[str, float]:
    """Term -> weight of what training would minimise (the objective's own reading of the config)."""
    return weights_of(compose_config(list(overrides)))


def weights_of(cfg) -> dict[str, float]:
    return {term.name: term.weight for term in ObjectiveSpec.from_config(cfg.loss).terms}


@pytest.mark.parametrize("stage", ["pretrain", "demo"])
def test_a_stage_preset_names_its_terms_once(stage: str) -> None:
    """Its file lists the terms in `active` and sets only the weights it changes: no zero weights to say it twice."""
    preset = OmegaConf.load(config_dir() / "loss" / f"{stage}.yaml")
    assert list(preset.active) == list(ACTIVE[stage])
    assert set(preset.terms) <= set(preset.active)
    assert all(term.weight > 0 for term in preset.terms.values())


@pytest.mark.parametrize("experiment", sorted(ACTIVE))
def test_each_experiment_runs_exactly_its_terms(experiment: str) -> None:
    """Stage presets name their terms (`loss.active`); the paper's objective runs every weighted term."""
    cfg = compose_config([f"experiment={experiment}"])
    assert weights_of(cfg) == ACTIVE[experiment]
    assert (cfg.loss.active is None) == (experiment == "full")
    assert cfg.loss.active is None or list(cfg.loss.active) == list(ACTIVE[experiment])
    assert bool(ObjectiveSpec.from_config(cfg.loss).critics) == (experiment != "pretrain"), (
        "PSNR stage: no critic"
    )
    # ablation=no_grad zeroes mu, eps, eta in every stage; no_se changes no term
    without_grad = {name: w for name, w in ACTIVE[experiment].items() if name not in NO_GRAD_OFF}
    assert active_terms(f"experiment={experiment}", "ablation=no_grad") == without_grad
    assert active_terms(f"experiment={experiment}", "ablation=no_se") == ACTIVE[experiment]


@pytest.fixture
def conf_with_new_term(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of conf/ whose paper objective (conf/loss/dgggan.yaml) gained a weighted term `new`."""
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    paper = OmegaConf.load(conf / "loss" / "dgggan.yaml")
    paper.terms.new = NEW_TERM
    OmegaConf.save(paper, conf / "loss" / "dgggan.yaml")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(conf))
    return conf


def test_a_term_added_to_the_paper_never_joins_a_stage_unasked(conf_with_new_term: Path) -> None:
    assert active_terms("experiment=full") == PAPER_WEIGHTS | {"new": 0.1}  # the paper's objective gains it
    for stage in ("pretrain", "demo"):
        assert active_terms(f"experiment={stage}") == ACTIVE[stage]  # the stage runs what it names
        # the stage takes it once it says so
        with_new = active_terms(f"experiment={stage}", f"loss.active=[{','.join(ACTIVE[stage])},new]")
        assert with_new == ACTIVE[stage] | {"new": 0.1}


STAGE_OVERRIDES = [
    (
        "loss.terms.grad_img.weight=0.01",
        r"^loss.terms.grad_img.weight=0.01: loss.terms.grad_img is not among",
    ),
    ("+loss.terms.mse={weight: 0.1, input: sr, loss: {_target_: torch.nn.MSELoss}}", r"^loss.terms.mse=\{"),
]


@pytest.mark.parametrize(("override", "message"), STAGE_OVERRIDES)
def test_a_weight_typed_outside_the_stage_is_refused_before_the_run_not_ignored(override, message) -> None:
    """check_objective (train calls it before any run folder exists) names the term and the one-line fix."""
    from dgggan_pl.config import ConfigError
    from dgggan_pl.config_checks import check_objective

    overrides = ["experiment=pretrain", override]
    with pytest.raises(ConfigError, match=message) as error:
        check_objective(compose_config(overrides), overrides)
    assert "\n" not in str(error.value) and "loss.active=[pixel,grad_branch," in str(error.value)
    # inside the stage, or a weight of 0, is fine; so is the same value set by a config file
    check_objective(
        compose_config(["experiment=pretrain"]), ["experiment=pretrain", "loss.terms.pixel.weight=2"]
    )
    zero = ["experiment=pretrain", "loss.terms.grad_img.weight=0"]
    check_objective(compose_config(zero), zero)
    check_objective(compose_config(overrides), ["experiment=pretrain"])
    with pytest.raises(ConfigError, match=r"loss.active names \['gradient'\]"):
        active_terms("experiment=pretrain", "loss.active=[pixel,gradient]")
