"""Loss presets per stage (conf/loss/): each experiment runs the terms it states, and no term joins a stage unasked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dgggan_pl.config import CONFIG_DIR_ENV, compose_config, config_dir
from dgggan_pl.objective import critic_inputs, term_specs
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
    return {spec.name: spec.weight for spec in term_specs(OmegaConf.to_container(cfg.loss, resolve=True))}


@pytest.mark.parametrize("experiment", sorted(ACTIVE))
def test_each_experiment_runs_exactly_its_terms(experiment: str) -> None:
    """Stage presets name their terms (`loss.active`); the paper's objective runs every weighted term."""
    cfg = compose_config([f"experiment={experiment}"])
    assert weights_of(cfg) == ACTIVE[experiment]
    assert (cfg.loss.active is None) == (experiment == "full")
    assert cfg.loss.active is None or list(cfg.loss.active) == list(ACTIVE[experiment])
    assert bool(critic_inputs(cfg.loss)) == (experiment != "pretrain"), "the PSNR stage builds no critic"
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


def test_a_term_added_to_the_paper_never_joins_a_stage_silently(conf_with_new_term: Path) -> None:
    assert active_terms("experiment=full") == PAPER_WEIGHTS | {"new": 0.1}  # the paper's objective gains it
    for stage in ("pretrain", "demo"):
        with pytest.raises(ValueError, match=r"loss.terms.new.weight=0.1 but loss.active=.* leaves it out"):
            active_terms(f"experiment={stage}")
        # the stage takes it once it says so, or runs without it once its weight is 0
        with_new = active_terms(f"experiment={stage}", f"loss.active=[{','.join(ACTIVE[stage])},new]")
        assert with_new == ACTIVE[stage] | {"new": 0.1}
        assert active_terms(f"experiment={stage}", "loss.terms.new.weight=0") == ACTIVE[stage]


def test_an_override_outside_the_stage_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"loss.terms.grad_img.weight=0.01 .* add it \(loss.active=\["):
        active_terms("experiment=pretrain", "loss.terms.grad_img.weight=0.01")
    with pytest.raises(ValueError, match=r"loss.active names \['gradient'\]"):
        active_terms("experiment=pretrain", "loss.active=[pixel,gradient]")


def test_the_refusal_comes_before_the_run_starts() -> None:
    """train's check_config turns it into its one-line error (exit 1, no traceback, no run folder written)."""
    from dgggan_pl.config import ConfigError
    from dgggan_pl.config_checks import check_config

    with pytest.raises(ConfigError, match=r"^loss.terms.grad_img.weight=0.01 but loss.active=") as error:
        check_config(compose_config(["experiment=pretrain", "loss.terms.grad_img.weight=0.01"]))
    assert "\n" not in str(error.value)
    check_config(compose_config(["experiment=pretrain"]))  # the preset itself passes
