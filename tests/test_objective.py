"""The configured objective: terms and what they compare, critics derived from them, the step count, extension.

`ObjectiveSpec.from_config` is the one reading of `cfg.loss`; everything here is derived from the spec it returns.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from omegaconf import OmegaConf
from torch import nn

from dgggan_pl.models.contract import GeneratorOutput
from dgggan_pl.models.gradient import gradient_magnitude
from dgggan_pl.module import DGGGANModule
from dgggan_pl.objective import Objective, ObjectiveSpec
from dgggan_pl.train import derive_max_steps

WEIGHTS = {  # eq. 7's weights in the paper (experiment=full)
    "percept": 1.0,
    "pixel": 0.01,
    "grad_img": 0.01,
    "adv": 0.005,
    "adv_grad": 0.005,
    "grad_branch": 0.5,
}


def loss_config(compose, *overrides: str) -> dict:
    cfg = compose(["experiment=full", "debug=smoke", *overrides])
    return OmegaConf.to_container(cfg.loss, resolve=True)


def spec_of(compose, *overrides: str) -> ObjectiveSpec:
    return ObjectiveSpec.from_config(loss_config(compose, *overrides))


def critics_of(cfg) -> dict[str, str]:
    return dict(ObjectiveSpec.from_config(cfg.loss).critics)


class MeanCritic(nn.Module):
    """D(x) = mean of x per sample, times a learnable scale: known scores for hand-made inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1).mean(1, keepdim=True)


def test_each_term_compares_its_input_and_the_total_is_eq7(compose) -> None:
    objective = Objective(spec_of(compose, "loss.terms.percept.weight=0"))
    generator = torch.Generator().manual_seed(0)
    sr, grad_map, hr = (torch.rand(2, 3, 8, 8, generator=generator) for _ in range(3))
    critics = {"image_critic": MeanCritic(), "gradient_critic": MeanCritic()}
    total, stats = objective.generator_loss(GeneratorOutput(sr, grad_map), hr, critics, adversarial=True)
    expected = {
        "loss_pixel": (sr - hr).abs().mean(),
        "loss_grad_img": (gradient_magnitude(sr) - gradient_magnitude(hr)).abs().mean(),
        "loss_grad_branch": (grad_map - gradient_magnitude(hr)).abs().mean(),
        "loss_adv": -2.0 * sr.mean(),
        "loss_adv_grad": -2.0 * gradient_magnitude(sr).mean(),
    }
    assert stats.keys() == expected.keys() | {"loss_g"}  # theta = 0: no perceptual term at all
    for name, value in expected.items():
        assert torch.allclose(stats[name], value), name
    weighted = sum(WEIGHTS[name.removeprefix("loss_")] * value for name, value in expected.items())
    assert torch.allclose(total, weighted) and torch.equal(stats["loss_g"], total.detach())

    # the generator-only warm-up leaves the adversarial terms out
    _, warmup = objective.generator_loss(GeneratorOutput(sr, grad_map), hr, critics, adversarial=False)
    assert warmup.keys() == {"loss_pixel", "loss_grad_img", "loss_grad_branch", "loss_g"}


def test_each_critic_is_trained_on_the_pair_its_term_compares(compose) -> None:
    objective = Objective(spec_of(compose, "loss.terms.percept.weight=0"))
    sr, grad_map, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    sr.requires_grad_(True)
    critics = {"image_critic": MeanCritic(), "gradient_critic": MeanCritic()}
    total, stats = objective.critics_loss(GeneratorOutput(sr, grad_map), hr, critics, torch.Generator())
    # float32 means of 128 values: the two orders of summation differ by ~1e-7 (rtol alone flaked on a small wdist)
    assert torch.allclose(stats["image_critic/wdist"], 2.0 * (hr.mean() - sr.mean()), atol=1e-6)
    grad_wdist = 2.0 * (gradient_magnitude(hr).mean() - gradient_magnitude(sr).mean())
    assert torch.allclose(stats["gradient_critic/wdist"], grad_wdist, atol=1e-6)
    assert torch.allclose(total, stats["image_critic/loss_d"] + stats["gradient_critic/loss_d"])
    total.backward()
    assert sr.grad is None  # the SR is detached: a critic update never reaches the generator
    assert all(critic.scale.grad is not None for critic in critics.values())


def test_critics_and_steps_are_derived_from_the_adversarial_terms(compose) -> None:
    full = compose(["experiment=full"])
    assert critics_of(full) == {"image_critic": "sr", "gradient_critic": "sr_gradient"}
    assert critics_of(compose(["experiment=full", "ablation=no_grad"])) == {"image_critic": "sr"}
    assert critics_of(compose(["experiment=pretrain"])) == {}
    optim = {"n_critic": 3, "gan_start_iteration": 4}
    assert ObjectiveSpec.from_config(full.loss).optimizer_steps(10, optim) == 4 + 6 * (1 + 3)
    pretrain = ObjectiveSpec.from_config(compose(["experiment=pretrain"]).loss)
    assert pretrain.optimizer_steps(10, optim) == 10
    # one rule: train.py's max_steps is this method, of the spec it is given or of cfg.loss
    cfg = compose(["experiment=full", "iterations=10", "optim.n_critic=3"])
    assert derive_max_steps(cfg) == 40 and derive_max_steps(cfg, pretrain) == 10
    no_adv = compose(["experiment=full", "loss.terms.adv.weight=0", "loss.terms.adv_grad.weight=0"])
    assert critics_of(no_adv) == {} and derive_max_steps(no_adv) == no_adv.iterations


def test_weight_zero_or_null_drops_a_term_and_builds_nothing_for_it(compose) -> None:
    cfg = compose(["experiment=full", "debug=smoke", "loss.terms.adv.weight=0", "loss.terms.percept=null"])
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim")}
    module = DGGGANModule(**parts)
    assert set(module.objective.terms) == {"pixel", "grad_img", "adv_grad", "grad_branch"}  # no VGG19
    assert module.image_critic is None and isinstance(module.gradient_critic, nn.Module)
    assert list(module.critics) == ["gradient_critic"]
    assert not any(key.startswith("image_critic.") for key in module.state_dict())


def test_a_generator_without_a_gradient_map_runs_the_objective_without_its_terms(compose) -> None:
    full = spec_of(compose)
    without = full.without_gradient_map()
    assert full.gradient_map_terms == ["grad_branch"] and without.gradient_map_terms == []
    assert [t.name for t in without.terms] == [t.name for t in full.terms if t.name != "grad_branch"]
    assert without.critics == full.critics  # they judge SR and G(SR), which every generator gives
    # a critic judging the gradient map goes with it, and so do its optimizer steps
    map_critic = (
        "+loss.terms.adv_map={weight: 0.1, input: grad_map, critic: map_critic, "
        "loss: {_target_: dgggan_pl.losses.WassersteinGeneratorLoss}}"
    )
    judged = spec_of(compose, map_critic)
    assert (
        judged.critics["map_critic"] == "grad_map"
        and "map_critic" not in judged.without_gradient_map().critics
    )
    assert judged.critic_slots == without.critic_slots + ("map_critic",)  # the module keeps its attribute
    with pytest.raises(ValueError, match=r"only \['grad_branch'\] run, and they need a gradient map"):
        spec_of(compose, "loss.active=[grad_branch]").without_gradient_map()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.terms.pixel.input=hr", "loss.terms.pixel.input='hr' is not one of"),
        ("loss.terms.pixel.weight=-1", "loss.terms.pixel.weight=-1.0 is negative"),
        ("+loss.terms.pixel.wieght=1", "loss.terms.pixel: unknown keys \\['wieght'\\]"),
        ("loss.terms.adv_grad.critic=image_critic", "critic image_critic already judges input sr"),
    ],
)
def test_malformed_terms_are_refused_naming_the_key(compose, override, message) -> None:
    with pytest.raises(ValueError, match=message):
        spec_of(compose, override)


def test_objectives_without_a_generator_term_are_refused(compose) -> None:
    zero = [f"loss.terms.{name}.weight=0" for name in WEIGHTS]
    with pytest.raises(ValueError, match="every term of the stage has weight 0"):
        spec_of(compose, *zero)
    adversarial_only = Objective(spec_of(compose, *zero[:3], zero[5], "loss.terms.adv.weight=1"))
    out = GeneratorOutput(torch.rand(1, 3, 8, 8), None)
    with pytest.raises(ValueError, match="optim.gan_start_iteration"):
        adversarial_only.generator_loss(out, torch.rand(1, 3, 8, 8), {}, adversarial=False)
    model = {"generator": {}, "image_critic": None, "gradient_critic": {}}
    with pytest.raises(ValueError, match="loss.terms.adv needs a model.image_critic config"):
        spec_of(compose).check_critics(model)


def test_a_new_term_is_one_config_entry_and_is_logged(compose) -> None:
    term = "+loss.terms.my_l2={weight: 0.25, input: sr, loss: {_target_: torch.nn.MSELoss}}"
    cfg = compose(["experiment=full", "debug=smoke", "loss.terms.percept.weight=0", term])
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "optim")}
    module = DGGGANModule(**parts)
    assert isinstance(module.objective.terms["my_l2"], nn.MSELoss)
    lr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    out = module.generator(lr)
    total, stats = module._generator_objective(out, hr)
    assert torch.allclose(stats["loss_my_l2"], ((out.sr - hr) ** 2).mean())
    without = copy.deepcopy(parts["loss"])
    del without["terms"]["my_l2"]
    base, _ = Objective(ObjectiveSpec.from_config(without)).generator_loss(
        out, hr, module.critics, adversarial=True
    )
    assert torch.allclose(total, base + 0.25 * stats["loss_my_l2"])

    batches = [{"lr": lr[0], "hr": hr[0]}] * 2
    trainer = Trainer(
        accelerator="cpu",
        max_steps=derive_max_steps(OmegaConf.merge(cfg, {"iterations": 1})),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=2))
    assert "train/loss_my_l2" in trainer.callback_metrics
    checkpoint_loss = module.hparams.loss["terms"]["my_l2"]
    assert checkpoint_loss == {"weight": 0.25, "input": "sr", "loss": {"_target_": "torch.nn.MSELoss"}}
