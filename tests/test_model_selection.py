"""GAN-aware checkpoint selection: PI, then LPIPS, then NIQE for GAN experiments; PSNR for the PSNR stage.

The availability maps are faked (metric -> reason), never the metric values: the rule only depends on which
metrics this machine can compute.
"""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from dgggan_pl.callbacks.checkpoint import MonitorFallbackCheckpoint
from dgggan_pl.train import instantiate_callbacks, unavailable_metrics

NO_MA = {"ma": "no Ma model", "pi": "needs ma"}
NO_LPIPS = {"lpips": "no AlexNet weights"}
NO_NIQE = {"niqe": "no NIQE model file"}


def checkpoint_callback(
    compose, overrides: list[str], unavailable: dict[str, str]
) -> MonitorFallbackCheckpoint:
    cfg = compose([*overrides, "paths.output_dir=unused"])
    return instantiate(cfg.callbacks.model_checkpoint, unavailable=unavailable)


@pytest.mark.parametrize(
    ("unavailable", "expected"),
    [
        ({}, "val/Set14/pi"),
        (NO_MA, "val/Set14/lpips"),
        (NO_MA | NO_LPIPS, "val/Set14/niqe"),
    ],
    ids=["pi-available", "no-pi-but-lpips", "no-pi-no-lpips"],
)
@pytest.mark.parametrize("experiment", ["full", "demo"])
def test_gan_experiments_fall_back_pi_lpips_niqe(compose, experiment, unavailable, expected) -> None:
    callback = checkpoint_callback(compose, [f"experiment={experiment}"], unavailable)
    if experiment == "demo":  # the demo validates on the held-out sample images
        expected = expected.replace("Set14", "Sample")
    assert callback.monitor == expected and callback.mode == "min"
    assert callback.selection() == {
        "monitor": expected,
        "mode": "min",
        "rule": "best",
        "chain": [expected.rsplit("/", 1)[0] + f"/{m}" for m in ("pi", "lpips", "niqe")],
    }


def test_pretrain_keeps_psnr_whatever_is_missing(compose) -> None:
    callback = checkpoint_callback(compose, ["experiment=pretrain"], NO_MA | NO_LPIPS | NO_NIQE)
    assert (callback.monitor, callback.mode) == ("val/Set14/psnr", "max")
    smoke = checkpoint_callback(compose, ["experiment=pretrain", "debug=smoke"], {})
    assert (smoke.monitor, smoke.mode) == ("val/Sample/psnr", "max")  # debug=smoke keeps the stage's metric


def test_nothing_computable_is_refused_or_keeps_the_latest(compose) -> None:
    nothing = NO_MA | NO_LPIPS | NO_NIQE
    with pytest.raises(InstantiationException, match="callbacks.model_checkpoint.*if_none_available=latest"):
        checkpoint_callback(compose, ["experiment=full"], nothing)
    latest = checkpoint_callback(compose, ["experiment=demo"], nothing)
    assert latest.monitor is None and latest.selection()["rule"] == "latest"


def test_train_hands_the_callback_the_unavailable_metrics(compose) -> None:
    """The map comes from cfg.metrics (here: no Ma model, random LPIPS), not from asking the module."""
    cfg = compose(["experiment=full", "debug=smoke", "paths.output_dir=unused"])
    unavailable = unavailable_metrics(cfg.metrics)
    assert {"pi", "ma", "lpips"} <= unavailable.keys() and "psnr" not in unavailable
    assert "lpips_random_backbone" in unavailable["lpips"]  # a random backbone is no LPIPS to select on
    (callback,) = [c for c in instantiate_callbacks(cfg.callbacks, unavailable) if hasattr(c, "selection")]
    expected = "val/Sample/niqe" if "niqe" not in unavailable else None
    assert callback.monitor == expected
    disabled = unavailable_metrics(compose(["metrics.lpips=disabled", "paths.output_dir=unused"]).metrics)
    assert "disabled" in disabled["lpips"]
    only_psnr = compose(["metrics.benchmark.metrics=[psnr]", "paths.output_dir=unused"]).metrics
    assert unavailable_metrics(only_psnr)["ssim"] == "not requested (metrics.benchmark.metrics)"
