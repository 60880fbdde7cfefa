"""`experiment=full` without `model.init_from` trains the GAN from a random generator: one warning at start,
silenced by an explicit `model.init_from=null` on the command line."""

from __future__ import annotations

import logging

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from dgggan_pl.config import config_dir
from dgggan_pl.config_checks import RANDOM_GAN_START, explicitly_null, random_gan_start
from dgggan_pl.train import warn_random_gan_start


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        (["experiment=full"], True),
        (["experiment=full", "debug=smoke"], True),  # smoke keeps the GAN from iteration 0
        (["experiment=full", "model.init_from=null"], False),
        (["experiment=full", "++model.init_from=null"], False),
        (["experiment=full", "model.init_from=runs/pretrain/checkpoints/last.ckpt"], False),
        (["experiment=pretrain"], False),  # no critic: nothing adversarial to start
        (["experiment=demo"], False),  # a generator-only warm-up comes first
    ],
)
def test_the_warning_names_pretrain_unless_told_otherwise(compose, overrides, warned) -> None:
    cfg = compose(overrides)
    expected = RANDOM_GAN_START if warned else None
    assert random_gan_start(cfg, ckpt_path=None, overrides=overrides) == expected
    assert random_gan_start(cfg, ckpt_path="last.ckpt", overrides=overrides) is None  # resuming: its own G
    assert "experiment=pretrain" in RANDOM_GAN_START and "model.init_from=null" in RANDOM_GAN_START


def test_only_a_typed_null_counts_as_explicit() -> None:
    assert explicitly_null("model.init_from", ["model.init_from=null"])
    assert not explicitly_null("model.init_from", ["model.init_from=x.ckpt", "model.init_fromx=null"])
    assert not explicitly_null("model.init_from", ["~model.init_from"])  # a delete is not a choice of null


@pytest.mark.parametrize(("override", "records"), [([], 1), (["model.init_from=null"], 0)])
def test_one_warning_read_from_the_hydra_command_line(caplog, override, records) -> None:
    """As under `python -m dgggan_pl.train`: the overrides come from Hydra's own record of the command line."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=full", *override], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="dgggan_pl.train"):
            warn_random_gan_start(cfg, ckpt_path=None)
    finally:
        HydraConfig.instance().cfg = None
    assert [r.getMessage() for r in caplog.records] == [RANDOM_GAN_START] * records
