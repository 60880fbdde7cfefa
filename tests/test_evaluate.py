"""`dgggan_pl.evaluate`: checkpoints, bicubic and results folders side by side; tables, notes, preflight."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.io import save_image
from dgggan_pl.evaluate import PreflightError, evaluate
from dgggan_pl.methods import MethodError, bicubic_upscaler, build_methods
from dgggan_pl.metrics.niqe import NIQEModelError
from dgggan_pl.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]
FAST = "metrics.benchmark.metrics=[psnr,ssim]"


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


@pytest.mark.filterwarnings("ignore:LPIPS uses a RANDOM")
def test_bicubic_and_a_checkpoint_side_by_side(
    compose, data_dir: Path, tmp_path: Path, tiny_generator_checkpoint
) -> None:
    ckpt = tiny_generator_checkpoint()
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["dgggan"] = {"iteration": 1234}  # what DGGGANModule.on_save_checkpoint writes
    torch.save(checkpoint, ckpt)
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
    assert "| Bicubic | MATLAB bicubic of the LR input | 28.4" in table3
    assert f"| tiny | {ckpt}, iteration 1234, raw weights |" in table3  # which checkpoint the row is
    table4 = (out / "table4_pi_lpips.md").read_text()
    assert "LPIPS (RANDOM backbone, test only)" in table4 and "pyiqa is not installed" in table4
    assert "PI / LPIPS (RANDOM backbone, test only) / NIQE" in table4
    niqe = results["Bicubic"]["Set5"].values["niqe"]
    assert f" / {niqe:.3f} |" in table4.splitlines()[4], "NIQE sits in Table 4 beside PI and LPIPS"
    assert "- PI (every row and set): needs ma (unavailable: see its reason)" in table4
    assert "- Ma (needed by PI) (every row and set): pyiqa is not installed" in table4
    rows = list(csv.DictReader((out / "table4_pi_lpips.csv").open()))
    assert rows[0]["Set5 PI"] == "unavailable" and float(rows[0]["Set5 NIQE"]) == niqe
    assert rows[1]["source"] == f"{ckpt}, iteration 1234, raw weights"
    per_image = list(csv.DictReader((out / "per_image" / "Bicubic" / "Set5.csv").open()))
    assert [r["image"] for r in per_image] == ["baby", "bird", "butterfly", "head", "woman"]
    assert {"psnr", "ssim", "niqe", "lpips_random_backbone"} <= set(per_image[0])
    assert len(list((out / "images" / "tiny" / "Set5").glob("*.png"))) == 5


def test_disabled_lpips_says_disabled_under_table4(compose, data_dir: Path, tmp_path: Path) -> None:
    cfg = _config(
        compose, data_dir, tmp_path, "metrics.lpips=disabled", "metrics.benchmark.metrics=[psnr,lpips]"
    )
    evaluate(cfg)
    table4 = (tmp_path / "table4_pi_lpips.md").read_text()
    assert "- LPIPS (every row and set): disabled (metrics.lpips=disabled)" in table4
    assert "- PI (every row and set): not requested (metrics.benchmark.metrics)" in table4
    assert "LPIPS (every row and set): not requested" not in table4


def test_evaluate_requires_the_niqe_model(compose, data_dir: Path, tmp_path: Path) -> None:
    missing = f"metrics.niqe_model_path={tmp_path / 'missing.mat'}"
    cfg = _config(compose, data_dir, tmp_path / "out", "metrics.benchmark.metrics=[psnr,niqe]", missing)
    with pytest.raises(PreflightError, match="missing.mat") as info:
        evaluate(cfg)
    assert "'metrics.benchmark.metrics=[psnr]'" in str(info.value) and len(str(info.value).splitlines()) == 1
    # With download on, the failed fetch is an error too (never a silent number).
    cfg = _config(
        compose,
        data_dir,
        tmp_path / "out",
        "metrics.benchmark.metrics=[psnr,niqe]",
        missing,
        "metrics.download=true",
        "metrics.benchmark.niqe_model_url=http://127.0.0.1:9/modelparameters.mat",
    )
    with pytest.raises(NIQEModelError, match="downloading"):
        evaluate(cfg)


@pytest.mark.slow
def test_offline_cli_fails_fast_one_line_per_missing_file(data_dir: Path, tmp_path: Path) -> None:
    """The README's plain command offline: exit 2, one line per missing file naming the override, no traceback."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "DGGGAN_DATA_DIR": str(tmp_path / "nodata")}
    command = [sys.executable, "-m", "dgggan_pl.evaluate", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), done.stderr
    assert "alexnet-owt-7be5be79.pth" in lines[0] and "metrics.lpips=disabled" in lines[0]
    assert "NIQE model not found" in lines[1] and "'metrics.benchmark.metrics=[psnr,ssim,lpips]'" in lines[1]
    assert "Traceback" not in done.stderr + done.stdout


def test_bad_labels_name_the_key(compose, data_dir: Path, tmp_path: Path) -> None:
    cfg = _config(compose, data_dir, tmp_path, "models=[bicubic]", "labels=[a,b]")
    with pytest.raises(MethodError, match="labels"):
        evaluate(cfg)


# ------------------------------------------------------------------ results folders (other methods' SR images)
@pytest.fixture
def bicubic_results(benchmark_dir: Path, tmp_path: Path) -> Path:
    """Bicubic SR images of Set5 written as a published method's results: `<folder>/Set5/<name>_x4.png`."""
    folder = tmp_path / "BIC"
    upscale = bicubic_upscaler(4)
    for item in BenchmarkDataset(benchmark_dir / "Set5", 4):
        save_image(upscale(item["lr"][None])[0], folder / "Set5" / f"{item['name']}_x4.png")
    return folder


def test_results_folder_scores_like_the_method_it_holds(
    compose, data_dir: Path, tmp_path: Path, bicubic_results: Path
) -> None:
    cfg = _config(
        compose, data_dir, tmp_path / "out", FAST, f'models=[bicubic,"results:BIC={bicubic_results}"]'
    )
    results = evaluate(cfg)
    assert list(results) == ["Bicubic", "BIC"]
    assert results["BIC"]["Set5"].values == pytest.approx(results["Bicubic"]["Set5"].values, abs=1e-9)
    assert (
        f"| BIC | SR images in {bicubic_results} |" in (tmp_path / "out" / "table3_psnr_ssim.md").read_text()
    )


def _results_error(compose, data_dir: Path, tmp_path: Path, folder: Path) -> str:
    cfg = _config(compose, data_dir, tmp_path / "out", FAST, f'models=["results:BIC={folder}"]')
    with pytest.raises(MethodError) as info:
        evaluate(cfg)
    assert not (tmp_path / "out" / "table3_psnr_ssim.md").exists(), "nothing is scored on a subset"
    return str(info.value)


def test_results_folder_missing_image(compose, data_dir: Path, tmp_path: Path, bicubic_results: Path) -> None:
    (bicubic_results / "Set5" / "bird_x4.png").unlink()
    message = _results_error(compose, data_dir, tmp_path, bicubic_results)
    assert message == f"results:BIC: no SR image for Set5/bird in {bicubic_results / 'Set5'} (e.g. bird.png)"


def test_results_folder_wrong_size(compose, data_dir: Path, tmp_path: Path, bicubic_results: Path) -> None:
    path = bicubic_results / "Set5" / "head_x4.png"
    Image.open(path).resize((100, 80)).save(path)
    message = _results_error(compose, data_dir, tmp_path, bicubic_results)
    assert message.startswith(f"results:BIC: {path} is 100x80 but the HR Set5/head is 280x280")


def test_results_folder_extra_and_duplicate_files(
    compose, data_dir: Path, tmp_path: Path, bicubic_results: Path
) -> None:
    set_dir = bicubic_results / "Set5"
    shutil.copy(set_dir / "baby_x4.png", set_dir / "baby_SR.png")
    (set_dir / "notes.txt").write_text("not an image")
    shutil.copy(set_dir / "woman_x4.png", set_dir / "lena.png")
    lines = _results_error(compose, data_dir, tmp_path, bicubic_results).splitlines()
    assert len(lines) == 3, lines
    assert any(str(set_dir / "baby_x4.png") in line and "both Set5/baby" in line for line in lines)
    assert any(
        line.startswith(f"results:BIC: {set_dir / 'lena.png'} matches no Set5 HR image") for line in lines
    )
    assert any(
        line.startswith(f"results:BIC: {set_dir / 'notes.txt'} matches no Set5 HR image") for line in lines
    )


def test_results_folder_missing_set_and_bad_entry(
    compose, data_dir: Path, tmp_path: Path, bicubic_results: Path
) -> None:
    cfg = _config(
        compose,
        data_dir,
        tmp_path / "out",
        FAST,
        "sets=[Set5,Set14]",
        f'models=["results:BIC={bicubic_results}"]',
    )
    with pytest.raises(MethodError, match=f"results:BIC: {bicubic_results / 'Set14'} is missing"):
        evaluate(cfg)
    cfg = _config(compose, data_dir, tmp_path / "out", FAST, f'models=["results:{bicubic_results}"]')
    with pytest.raises(MethodError, match="results:<Label>=<folder>"):
        evaluate(cfg)


def test_nan_weights_are_refused_before_scoring(tiny_generator_checkpoint) -> None:
    """Rows of evaluate and figures load through SRModel: NaN weights never become `nan` table rows."""
    checkpoint = tiny_generator_checkpoint()
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["generator.image_out.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, checkpoint)
    with pytest.raises(
        WeightsError, match=rf"^{checkpoint}: tensor image_out.weight holds NaN/Inf \(1 of 216"
    ):
        build_methods(
            [str(checkpoint)], None, {}, scale=4, use_ema=None, device=torch.device("cpu"), result_suffixes=[]
        )
