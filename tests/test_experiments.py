"""Every experiment composes with every ablation, and states the numbers it promises."""

from __future__ import annotations

import pytest

from dgggan_pl.objective import critic_inputs
from dgggan_pl.train import derive_max_steps
from test_objective import WEIGHTS as PAPER_WEIGHTS  # eq. 7's weights, stated once

EXPERIMENTS = ["pretrain", "full", "demo"]
ABLATIONS = ["none", "no_grad", "no_se"]


def test_full_is_the_paper(compose) -> None:
    cfg = compose(["experiment=full"])
    weights = {name: term.weight for name, term in cfg.loss.terms.items()}
    assert weights == PAPER_WEIGHTS
    assert cfg.loss.critic_loss.gp_weight == 10.0 and cfg.loss.terms.percept.loss.layer == 35
    assert critic_inputs(cfg.loss) == {"image_critic": "sr", "gradient_critic": "sr_gradient"}
    assert cfg.optim.generator.lr == 1e-4 and list(cfg.optim.generator.betas) == [0.9, 0.999]
    assert cfg.optim.critic.lr == 1e-4 and cfg.optim.n_critic == 1
    assert list(cfg.optim.scheduler.milestones) == [50000, 100000, 200000, 300000]
    assert cfg.optim.scheduler.gamma == 0.5
    assert cfg.iterations == 500000 and cfg.data.batch_size == 16
    assert cfg.hr_patch_size == 192 and cfg.hr_patch_size // cfg.scale == 48
    assert derive_max_steps(cfg) == 1_000_000
    assert cfg.model.generator.channels == 64


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_and_ablation_compose(compose, experiment, ablation) -> None:
    cfg = compose([f"experiment={experiment}", f"ablation={ablation}"])
    assert cfg.ablation.name == ablation
    assert cfg.trainer.max_steps is None  # declared null: derived from iterations
    weights = {name: term.weight for name, term in cfg.loss.terms.items()}
    if ablation == "no_grad":
        assert cfg.model.gradient_critic is None and not cfg.model.generator.use_gradient_branch
        assert weights["grad_img"] == weights["adv_grad"] == weights["grad_branch"] == 0
    if experiment == "pretrain":
        assert not critic_inputs(cfg.loss) and weights["percept"] == 0
        assert derive_max_steps(cfg) == cfg.iterations
    else:
        assert critic_inputs(cfg.loss)
    if experiment == "demo":
        assert cfg.model.generator.channels == 32 and cfg.trainer.accelerator == "cpu"
        assert weights["percept"] == 0  # theta = 0: no pretrained VGG19 needed
        assert 0 < cfg.optim.gan_start_iteration < cfg.iterations
    smoke = compose([f"experiment={experiment}", f"ablation={ablation}", "debug=smoke"])
    assert smoke.iterations <= 8 and smoke.trainer.accelerator == "cpu"
    assert smoke.model.generator.channels <= 8
