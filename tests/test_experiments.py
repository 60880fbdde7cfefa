"""Every experiment composes with every ablation, and states the numbers it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgggan_pl.objective import ObjectiveSpec
from dgggan_pl.train import derive_max_steps
from test_objective import WEIGHTS as PAPER_WEIGHTS  # eq. 7's weights, stated once

EXPERIMENTS = ["pretrain", "full", "demo"]
ABLATIONS = ["none", "no_grad", "no_se"]


def runs(cfg) -> dict[str, float]:
    """Term -> weight of the terms the experiment runs (the objective's one reading of `cfg.loss`)."""
    return {term.name: term.weight for term in ObjectiveSpec.from_config(cfg.loss).terms}


def critics_of(cfg) -> dict[str, str]:
    return dict(ObjectiveSpec.from_config(cfg.loss).critics)


def test_full_is_the_paper(compose) -> None:
    cfg = compose(["experiment=full"])
    weights = {name: term.weight for name, term in cfg.loss.terms.items()}
    assert weights == PAPER_WEIGHTS
    assert cfg.loss.critic_loss.gp_weight == 10.0 and cfg.loss.terms.percept.loss.layer == 35
    assert runs(cfg) == PAPER_WEIGHTS
    assert critics_of(cfg) == {"image_critic": "sr", "gradient_critic": "sr_gradient"}
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
    weights = runs(cfg)
    if ablation == "no_grad":
        assert cfg.model.gradient_critic is None and not cfg.model.generator.use_gradient_branch
        assert not {"grad_img", "adv_grad", "grad_branch"} & set(weights)  # mu = eps = eta = 0
    if experiment == "pretrain":
        assert not critics_of(cfg) and "percept" not in weights
        assert derive_max_steps(cfg) == cfg.iterations
    else:
        assert critics_of(cfg)
    if experiment == "demo":
        assert cfg.model.generator.channels == 32 and cfg.trainer.accelerator == "cpu"
        assert "percept" not in weights  # theta is off: no pretrained VGG19 needed
        assert 0 < cfg.optim.gan_start_iteration < cfg.iterations
    smoke = compose([f"experiment={experiment}", f"ablation={ablation}", "debug=smoke"])
    assert smoke.iterations <= 8 and smoke.trainer.accelerator == "cpu"
    assert smoke.model.generator.channels <= 8


@pytest.mark.parametrize("data", ["div2k", "div2k_packed", "benchmark_train", "folder"])
def test_an_experiment_composes_with_any_data_config(compose, data) -> None:
    """The demo's choice of sample photos belongs to its data config (data=sample_photos), not to the experiment."""
    cfg = compose(["experiment=demo", f"data={data}"])
    assert "names" not in cfg.data.train_source
    assert cfg.data.batch_size == 4 and cfg.hr_patch_size == 64  # the experiment's own values still apply
    assert list(compose(["experiment=demo"]).data.train_source.names) == ["astronaut", "coffee", "motorcycle"]


def test_training_on_a_folder_of_your_own_photos(compose, tmp_path) -> None:
    """docs/data.md's recipe: `experiment=demo data=folder data.train_source.hr_dir=<photos>` gives batches."""
    from hydra.utils import instantiate
    from PIL import Image
    from skimage import data as skdata

    from dgggan_pl.config import ConfigError
    from dgggan_pl.config_checks import check_config

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skdata.astronaut()).save(photos / "me.jpg")
    Image.fromarray(skdata.coffee()).save(photos / "cup.png")
    with pytest.raises(ConfigError, match=r"^data.train_source.hr_dir is required"):
        check_config(compose(["experiment=demo", "data=folder"]))  # the folder is not guessed
    cfg = compose(
        [
            "experiment=demo",
            "data=folder",
            f"data.train_source.hr_dir={photos}",
            "data.num_workers=0",
            "data.persistent_workers=false",
        ]
    )
    check_config(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert tuple(batch["hr"].shape) == (4, 3, 64, 64) and tuple(batch["lr"].shape) == (4, 3, 16, 16)
    assert {Path(name).stem for name in batch["name"]} <= {"me", "cup"}
    assert sorted(p.name for p in datamodule.train_dataset.source.hr_paths) == ["cup.png", "me.jpg"]
    assert datamodule.val_set_names == ["Sample"]
