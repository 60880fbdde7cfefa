"""Every `conf/model` x `conf/ablation` config composes and instantiates through Hydra; bad keys fail clearly.

`conf/model/<name>.yaml` is a generator (`model=<name>`); the critics come from `conf/model/critics/`, so every
model trains against the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dgggan_pl.config import ConfigError, config_dir
from dgggan_pl.config_checks import check_generator_arguments, check_generator_builds
from dgggan_pl.models.blocks import SqueezeExcitation
from dgggan_pl.models.critic import VGGCritic
from dgggan_pl.models.generator import DGGGANGenerator, SRBranch
from dgggan_pl.models.gradient import GradientMagnitude

Compose = Callable[..., DictConfig]
MODELS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (config_dir() / "ablation").glob("*.yaml"))
ABLATION_KEYS = {"no_grad": "use_gradient_branch", "no_se": "use_se"}  # DGGGAN's own constructor arguments


def _model_file(model: str) -> DictConfig:
    return OmegaConf.load(config_dir() / "model" / f"{model}.yaml")


def _target(model: str) -> str:
    """The generator class a model file builds, following its defaults within conf/model/."""
    raw = _model_file(model)
    return str(raw.generator.get("_target_") or _target(raw.defaults[0]))


DGGGAN_MODELS = [m for m in MODELS if _target(m).endswith("DGGGANGenerator")]

# Expected generator sizes (docs/models.md).
EXPECTED_PARAMS = {
    ("dgggan", "none"): 14_814_742,
    ("dgggan", "no_se"): 14_803_142,
    ("dgggan", "no_grad"): 7_370_475,
    ("dgggan_lite", "none"): 3_708_174,
    ("rrdbnet", "none"): 16_697_987,  # ESRGAN's published x4 generator
}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_config_groups_are_discovered() -> None:
    assert {"dgggan", "dgggan_lite", "rrdbnet"} <= set(MODELS) and DGGGAN_MODELS == ["dgggan", "dgggan_lite"]
    assert {"none", "no_grad", "no_se"} <= set(ABLATIONS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_is_its_generator_alone_and_gets_the_same_critics(compose: Compose, model: str) -> None:
    """A model file holds its generator's constructor arguments and nothing else; the critics are shared."""
    raw = _model_file(model)
    assert set(raw) <= {"defaults", "generator"}
    cfg = compose([f"model={model}"])
    assert set(cfg.model) == {"generator", "image_critic", "gradient_critic", "init_from"}
    critics_file = OmegaConf.load(config_dir() / "model" / "critics" / "vgg.yaml")
    assert OmegaConf.to_container(cfg.model.image_critic) == OmegaConf.to_container(critics_file.image_critic)
    with torch.device("meta"):
        generator = instantiate(cfg.model.generator)
        critics = [instantiate(cfg.model.image_critic), instantiate(cfg.model.gradient_critic)]
    assert all(isinstance(critic, VGGCritic) for critic in critics)
    if (model, "none") in EXPECTED_PARAMS:
        assert _params(generator) == EXPECTED_PARAMS[(model, "none")]
    assert f"{type(generator).__module__}.{type(generator).__qualname__}" == _target(model)
    if "defaults" not in raw:  # nothing merged in from elsewhere: no DGGGAN key reaches another constructor
        assert set(cfg.model.generator) == set(raw.generator)


@pytest.mark.parametrize("ablation", sorted(ABLATION_KEYS))
@pytest.mark.parametrize("model", sorted(set(MODELS) - set(DGGGAN_MODELS)))
def test_ablations_are_dgggans_own_and_name_their_key_elsewhere(
    compose: Compose, model: str, ablation: str
) -> None:
    cfg = compose([f"model={model}", f"ablation={ablation}"])
    with pytest.raises(InstantiationException, match=ABLATION_KEYS[ablation]) as info, torch.device("meta"):
        instantiate(cfg.model.generator)
    assert "model.generator" in str(info.value)
    # ... and a run refuses it before anything is written, in one line naming the key and the ablation
    with pytest.raises(ConfigError) as refused:
        check_generator_arguments(cfg)
    message = str(refused.value)
    assert message.startswith(f"model.generator.{ABLATION_KEYS[ablation]}: ") and "\n" not in message
    assert f"ablation={ablation} sets it" in message


def test_a_key_the_generator_does_not_take_is_named_with_its_arguments(compose: Compose) -> None:
    check_generator_arguments(compose(["model=dgggan"]))  # every key of the shipped config is an argument
    with pytest.raises(
        ConfigError, match=r"^model.generator.chanels: .*DGGGANGenerator takes no such argument"
    ):
        check_generator_arguments(compose(["++model.generator.chanels=3"]))


def test_a_value_the_generator_refuses_is_one_line_before_the_run(compose: Compose) -> None:
    check_generator_builds(compose(["debug=smoke"]))
    with pytest.raises(ConfigError) as refused:
        check_generator_builds(compose(["debug=smoke", "model.generator.se_reduction=16"]))
    assert str(refused.value) == (
        "model.generator: se_reduction=16 leaves no hidden channel for channels=8; "
        "set model.generator.se_reduction <= channels"
    )
    check_generator_builds(
        compose(["debug=smoke", "ablation=no_se", "model.generator.se_reduction=16"])
    )  # no SE


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("model", DGGGAN_MODELS)
def test_every_model_and_ablation_instantiates(compose: Compose, model: str, ablation: str) -> None:
    cfg = compose([f"model={model}", f"ablation={ablation}"])
    with torch.device("meta"):  # the real module trees, without paying for 56M initialised weights
        generator = instantiate(cfg.model.generator)
        image_critic = instantiate(cfg.model.image_critic)
        gradient_critic = instantiate(cfg.model.gradient_critic)
    assert isinstance(generator, DGGGANGenerator) and isinstance(image_critic, VGGCritic)
    assert generator.scale == cfg.scale and image_critic.patch_size == cfg.hr_patch_size
    kinds = [type(m) for m in generator.modules()]
    if ablation == "no_grad":
        assert not generator.use_gradient_branch and gradient_critic is None
        assert kinds.count(SRBranch) == 1 and GradientMagnitude not in kinds
    else:
        assert generator.use_gradient_branch and isinstance(gradient_critic, VGGCritic)
        assert gradient_critic is not image_critic
        assert kinds.count(SRBranch) == 2
    assert (SqueezeExcitation in kinds) == (ablation != "no_se")
    if (model, ablation) in EXPECTED_PARAMS:
        assert _params(generator) == EXPECTED_PARAMS[(model, ablation)]
    assert cfg.model.init_from is None


def test_lite_preset_is_the_same_network_at_half_width(compose: Compose) -> None:
    full, lite = compose(["model=dgggan"]).model, compose(["model=dgggan_lite"]).model
    assert (full.generator.channels, lite.generator.channels) == (64, 32)
    expected = OmegaConf.to_container(full, resolve=True)
    expected["generator"]["channels"] = 32
    assert OmegaConf.to_container(lite, resolve=True) == expected


def test_lite_preset_extends_the_full_one_by_its_width_alone() -> None:
    """model/dgggan_lite.yaml inherits model/dgggan.yaml (Hydra defaults) and sets nothing but the width."""
    lite = OmegaConf.load(config_dir() / "model" / "dgggan_lite.yaml")
    assert list(lite.defaults) == ["dgggan", "_self_"]
    assert OmegaConf.to_container(lite) == {"defaults": ["dgggan", "_self_"], "generator": {"channels": 32}}


@pytest.mark.parametrize("ablation", ["none", "no_grad", "no_se"])
def test_lite_preset_composes_as_before(compose: Compose, ablation: str) -> None:
    """Its composed config is the one the stand-alone file gave (recorded before it became an extension)."""
    generator = OmegaConf.to_container(compose(["model=dgggan_lite", f"ablation={ablation}"]).model.generator)
    assert generator == {
        "_target_": "dgggan_pl.models.generator.DGGGANGenerator",
        "in_channels": 3,
        "channels": 32,
        "num_blocks": 10,
        "injection_blocks": [3, 6, 9],
        "scale": "${scale}",
        "use_gradient_branch": ablation != "no_grad",
        "use_se": ablation != "no_se",
        "se_reduction": 16,
        "negative_slope": 0.2,
        "init_scale": 0.1,
        "global_skip": "none",
    }


def test_instantiated_generator_runs(compose: Compose) -> None:
    cfg = compose(["model=dgggan_lite"])
    generator = instantiate(cfg.model.generator).eval()
    with torch.no_grad():
        out = generator(torch.rand(1, 3, 3, 5))
    assert out.sr.shape == out.grad_map.shape == (1, 3, 12, 20)


@pytest.mark.parametrize("node", ["generator", "image_critic"])
def test_unknown_key_is_named_in_the_error(compose: Compose, node: str) -> None:
    cfg = compose([f"+model.{node}.chanels=32"])
    expected = r"unexpected keyword argument 'chanels'"
    with pytest.raises(InstantiationException, match=expected) as info, torch.device("meta"):
        instantiate(cfg.model[node])
    assert f"model.{node}" in str(info.value)


def test_bad_value_is_named_in_the_error(compose: Compose) -> None:
    cfg = compose(["model.generator.injection_blocks=[3,6,12]"])
    with pytest.raises(InstantiationException, match=r"injection_blocks .*\[12\]"), torch.device("meta"):
        instantiate(cfg.model.generator)
