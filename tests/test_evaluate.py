"""`dgggan_pl.evaluate`: checkpoints and the bicubic baseline side by side, tables, per-image CSVs, images."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import open_dict

from dgggan_pl.evaluate import evaluate
from dgggan_pl.metrics.niqe import NIQEModelError


def _config(compose, data_dir: Path, out: Path, *overrides: str):
    cfg = compose(
        [
            f"paths.data_dir={data_dir}",
            "sets=[Set5]",
            "progress=false",
            "metrics.lpips=random",
            f"metrics.niqe_model_path={data_dir / 'iqa-models' / 'niqe_release' / 'modelparameters.mat'}",
            *overrides,
        ],
        config_name="evaluate",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.filterwarnings("ignore:LPIPS uses a RANDOM", "ignore:metric '(ma|pi)' unavailable")
def test_bicubic_and_a_checkpoint_side_by_side(
    compose, data_dir: Path, tmp_path: Path, tiny_generator_checkpoint
) -> None:
    ckpt = tiny_generator_checkpoint()
    cfg = _config(
        compose,
        data_dir,
        tmp_path / "out",
        f"models=[bicubic,{ckpt}]",
        "labels=[Bicubic,tiny]",
        "save_images=true",
    )
    results = evaluate(cfg)
    assert list(results) == ["Bicubic", "tiny"]
    bicubic = results["Bicubic"]["Set5"].values
    assert abs(bicubic["psnr"] - 28.42) <= 0.1 and abs(bicubic["ssim"] - 0.8104) <= 0.005
    assert results["tiny"]["Set5"].values["psnr"] < bicubic["psnr"], (
        "a random tiny generator is worse than bicubic"
    )
    out = tmp_path / "out"
    table3 = (out / "table3_psnr_ssim.md").read_text()
    assert "| Bicubic | 28.4" in table3 and "| tiny |" in table3
    table4 = (out / "table4_pi_lpips.md").read_text()
    assert "LPIPS (RANDOM backbone, test only)" in table4 and "pyiqa is not installed" in table4
    rows = list(csv.DictReader((out / "table4_pi_lpips.csv").open()))
    assert rows[0]["Set5 PI"] == "unavailable"
    per_image = list(csv.DictReader((out / "per_image" / "Bicubic" / "Set5.csv").open()))
    assert [r["image"] for r in per_image] == ["baby", "bird", "butterfly", "head", "woman"]
    assert {"psnr", "ssim", "niqe", "lpips_random_backbone"} <= set(per_image[0])
    assert len(list((out / "images" / "tiny" / "Set5").glob("*.png"))) == 5


def test_evaluate_requires_the_niqe_model(compose, data_dir: Path, tmp_path: Path) -> None:
    cfg = _config(
        compose,
        data_dir,
        tmp_path / "out",
        "metrics.benchmark.metrics=[psnr,niqe]",
        f"metrics.niqe_model_path={tmp_path / 'missing.mat'}",
        "metrics.benchmark.niqe_model_url=null",
    )
    with pytest.raises(NIQEModelError, match="missing.mat"):
        evaluate(cfg)


def test_bad_labels_name_the_key(compose, data_dir: Path, tmp_path: Path) -> None:
    cfg = _config(compose, data_dir, tmp_path, "models=[bicubic]", "labels=[a,b]")
    with pytest.raises(ValueError, match="labels"):
        evaluate(cfg)
