"""`dgggan_pl.train.train` end to end at tiny width (debug=smoke) and its helpers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dgggan_pl.callbacks.checkpoint import AtomicCheckpointIO
from dgggan_pl.config import ConfigError
from dgggan_pl.runs import resolve_ckpt_path
from dgggan_pl.train import build_module, derive_max_steps, train
from dgggan_pl.weights import WeightsError

SMOKE = ["debug=smoke", "logger=csv"]


def run(compose, output_dir: Path, overrides: list[str]) -> dict[str, float]:
    return train(compose([*overrides, *SMOKE, f"paths.output_dir={output_dir}"]))


def csv_rows(output_dir: Path) -> list[dict[str, str]]:
    (metrics_file,) = output_dir.glob("csv/version_*/metrics.csv")
    with metrics_file.open() as file:
        return list(csv.DictReader(file))


def csv_columns(output_dir: Path) -> set[str]:
    return set(csv_rows(output_dir)[0])


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    from dgggan_pl.config import compose_config

    output_dir = tmp_path_factory.mktemp("pretrain")
    metrics = train(compose_config(["experiment=pretrain", *SMOKE, f"paths.output_dir={output_dir}"]))
    return output_dir, metrics


def test_pretrain_smoke_run_writes_every_artefact(pretrain_run) -> None:
    output_dir, metrics = pretrain_run
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["status"] == "completed" and info["error"] is None and info["ablation"] == "none"
    assert info["metrics"] == metrics
    assert (
        "pi" in info["metrics_unavailable"] and info["metrics_unavailable"]["pi"]
    )  # the reason, for reports
    assert {"test/Sample/psnr", "test/Sample/ssim", "val/Sample/psnr"} <= metrics.keys()
    assert not any(key.endswith("/lpips") for key in metrics)  # random backbone: labelled, never `lpips`
    rank = json.loads((output_dir / "ranks" / "rank0.json").read_text())
    assert rank["world_size"] == 1 and rank["config_sha256"] == info["config_sha256"]
    resolved = OmegaConf.load(output_dir / "config_resolved.yaml")
    assert "adv" not in resolved.loss.active and "${" not in (output_dir / "config_resolved.yaml").read_text()
    assert list((output_dir / "panels").glob("*.png"))

    # the selected and the last checkpoint are both tested and recorded; the PSNR stage selects on PSNR
    tested = info["checkpoints"]
    assert tested["selection"]["monitor"] == "val/Sample/psnr" and tested["selection"]["rule"] == "best"
    assert tested["last"]["path"] == "checkpoints/last.ckpt" and tested["last"]["iteration"] == 4
    assert tested["selected"]["path"].startswith("checkpoints/best-")
    assert tested["selected"]["metrics"].keys() == tested["last"]["metrics"].keys() >= {"test/Sample/psnr"}
    assert {k: v for k, v in metrics.items() if k.startswith("test/")} == tested["selected"]["metrics"]

    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # pretrain: one optimizer step per iteration, iterations=4
    assert {key.split(".", 1)[0] for key in checkpoint["state_dict"]} == {"generator"}
    assert checkpoint["hyper_parameters"]["model"]["generator"]["_target_"].endswith("DGGGANGenerator")
    columns = csv_columns(output_dir)
    assert {"train/loss_pixel", "train/loss_grad_branch", "train/loss_g", "val/Sample/psnr"} <= columns
    assert "train/loss_adv" not in columns


@pytest.mark.parametrize("experiment", ["full", "demo"])
def test_gan_experiments_smoke_run(compose, tmp_path, experiment) -> None:
    metrics = run(compose, tmp_path, [f"experiment={experiment}"])
    assert "test/Sample/psnr" in metrics
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # 4 iterations x (1 critic + 1 generator step)
    assert {key.split(".", 1)[0] for key in checkpoint["state_dict"]} == {
        "generator",
        "image_critic",
        "gradient_critic",
    }
    expected = {
        "train/loss_adv",
        "train/loss_adv_grad",
        "train/loss_grad_img",
        "train/image_critic/wdist",
        "train/image_critic/gp",
    }
    expected |= {
        "train/gradient_critic/wdist",
        "train/gradient_critic/gp",
        "train/loss_g",
        "train/loss_pixel",
    }
    if experiment == "full":
        expected.add("train/loss_percept")
    assert expected <= csv_columns(tmp_path)

    # one step axis: iterations (4), not optimizer steps (8), in file names, CSV steps and panels
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == ["best-4.ckpt", "last.ckpt"]
    rows = csv_rows(tmp_path)
    assert all(row["step"] == str(int(float(row["trainer/iteration"]))) for row in rows)
    train_steps = [int(row["step"]) for row in rows if row["train/loss_g"]]
    assert train_steps == [1, 2, 3, 4]
    val_steps = [int(row["step"]) for row in rows if row["val/Sample/psnr"]]
    assert val_steps == [2, 4]  # val_check_interval=2 iterations
    test_rows = [row for row in rows if row["test/Sample/psnr"]]
    assert [row["step"] for row in test_rows] == ["4", "4"]  # last.ckpt and the selected one
    assert {int(float(row["trainer/checkpoint_iteration"])) for row in test_rows} == {4}
    assert {p.name.split("_", 1)[0] for p in (tmp_path / "panels").glob("*.png")} == {"0000002", "0000004"}
    # the reasons for missing metrics sit beside the CSV log
    (reasons,) = tmp_path.glob("csv/version_*/metrics_unavailable.txt")
    lines = reasons.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == sorted(
        json.loads((tmp_path / "run_info.json").read_text())["metrics_unavailable"]
    )
    assert any(line.startswith("pi: ") and len(line) > len("pi: ") for line in lines)


def test_init_from_loads_the_generator_strictly(compose, pretrain_run) -> None:
    checkpoint_path = pretrain_run[0] / "checkpoints" / "last.ckpt"
    module = build_module(compose(["experiment=full", "debug=smoke", f"model.init_from={checkpoint_path}"]))
    state = torch.load(checkpoint_path, weights_only=True)["state_dict"]
    for key, value in module.generator.state_dict().items():
        assert torch.equal(value, state[f"generator.{key}"])
    with pytest.raises(WeightsError, match="unexpected keys: \\['gradient_branch"):
        build_module(compose(["ablation=no_grad", "debug=smoke", f"model.init_from={checkpoint_path}"]))


FAULT = "+callbacks.fault={_target_:rank_faults.FailOnRank,rank:0,batch:1}"  # a failure inside the run
FAULT_MESSAGE = "injected failure on rank 0 at batch 1"


def test_failed_run_is_recorded_and_reraised(compose, tmp_path) -> None:
    with pytest.raises(RuntimeError, match=FAULT_MESSAGE):
        run(compose, tmp_path, [FAULT])
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["status"] == "failed" and FAULT_MESSAGE in info["error"] and info["finished"]


def test_a_value_the_generator_refuses_writes_nothing(compose, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^model.generator: model.generator.injection_blocks \[7\]"):
        run(compose, tmp_path / "run", ["model.generator.injection_blocks=[7]"])
    assert not (tmp_path / "run").exists()


def test_max_steps_is_derived_from_iterations(compose) -> None:
    assert derive_max_steps(compose(["experiment=full", "iterations=10"])) == 20
    assert derive_max_steps(compose(["experiment=full", "iterations=10", "optim.n_critic=3"])) == 40
    assert derive_max_steps(compose(["experiment=pretrain", "iterations=10"])) == 10
    warm = ["experiment=full", "iterations=10", "optim.gan_start_iteration=4"]
    assert derive_max_steps(compose(warm)) == 4 + 6 * 2
    with pytest.raises(ValueError, match="set iterations=N instead"):
        derive_max_steps(compose(["experiment=full", "trainer.max_steps=5"]))


def test_ckpt_path_last_must_exist(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoints/last.ckpt"):
        resolve_ckpt_path("last", tmp_path)
    assert resolve_ckpt_path(None, tmp_path) is None


def test_checkpoint_write_interrupted_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def killed_mid_write(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt  # what a kill during torch.save looks like to the writer

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left behind


@pytest.mark.slow
def test_bf16_autocast_smoke_run_keeps_a_finite_penalty(compose, tmp_path) -> None:
    run(compose, tmp_path, ["experiment=full", "trainer.precision=bf16-mixed", "data.test_sources={}"])
    (metrics_file,) = tmp_path.glob("csv/version_*/metrics.csv")
    with metrics_file.open() as file:
        key = "train/image_critic/gp"
        penalties = [float(row[key]) for row in csv.DictReader(file) if row.get(key)]
    assert len(penalties) == 4 and all(torch.isfinite(torch.tensor(penalties)))


def test_a_finished_run_survives_a_bad_resume(compose, pretrain_run, tmp_path) -> None:
    """A typo in ckpt_path touches nothing; a resume that fails keeps the completed record and configs."""
    import shutil

    from dgggan_pl.runs import ResumeError

    run_dir = tmp_path / "run"
    shutil.copytree(pretrain_run[0], run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    base = ["experiment=pretrain", *SMOKE, f"paths.output_dir={run_dir}"]
    with pytest.raises(ResumeError, match="ckpt_path=checkpoints/lats.ckpt: no checkpoint"):
        train(compose([*base, "ckpt_path=checkpoints/lats.ckpt"]))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    with pytest.raises(ConfigError, match="injection_blocks"):  # refused before anything is written
        train(compose([*base, f"resume={run_dir}", "model.generator.injection_blocks=[7]"]))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    with pytest.raises(RuntimeError, match=FAULT_MESSAGE):  # fails inside the resumed run
        train(compose([*base, f"resume={run_dir}", "iterations=8", FAULT]))
    assert (run_dir / "run_info.json").read_bytes() == before[run_dir / "run_info.json"]
    assert (run_dir / "config_resolved.yaml").read_bytes() == before[run_dir / "config_resolved.yaml"]
    (failed,) = run_dir.glob("run_info.failed-*.json")
    assert json.loads(failed.read_text())["status"] == "failed"
    assert not list(run_dir.glob("run_info.attempt-*.json"))
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]  # no empty version folder
    assert len(list(run_dir.glob("config_resolved.resume-*.yaml"))) == 1  # the attempt's own config, beside


def test_a_width_mismatch_in_init_from_is_summarised(compose, tiny_generator_checkpoint) -> None:
    path = tiny_generator_checkpoint(channels=8)
    with pytest.raises(WeightsError) as caught:
        build_module(
            compose(
                ["experiment=full", "debug=smoke", "model.generator.channels=16", f"model.init_from={path}"]
            )
        )
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert "tensors have other shapes" in message and "more" in message and str(path) in message


@pytest.mark.slow
def test_two_runs_started_together_keep_the_lock_holders_record(tmp_path) -> None:
    """Issue: Hydra wrote `.hydra/` before the lock, so a run refused at the lock could leave its config as the
    record of the run that holds the folder. Now only the lock holder writes it, however close the starts."""
    import subprocess
    import sys

    from dgggan_pl.launch.commands import clean_env

    run_dir = tmp_path / "run"
    env = {**clean_env(os.environ), "OMP_NUM_THREADS": "1"}
    runs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "dgggan_pl.train", "experiment=pretrain", *SMOKE, f"seed={seed}"]
            + ["callbacks.image_panels=null", f"hydra.run.dir={run_dir}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)  # started a few milliseconds apart
    }
    outcomes = {seed: (p.wait(timeout=600), p.stderr.read() if p.stderr else "") for seed, p in runs.items()}
    (winner,) = [seed for seed, (code, _) in outcomes.items() if code == 0]
    loser = 3 - winner
    refusal = outcomes[loser][1].splitlines()[-1]
    assert outcomes[loser][0] == 1 and (
        "is in use by another run" in refusal or "already holds a run" in refusal
    )
    assert f"seed={winner}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == winner
    assert OmegaConf.load(run_dir / "config_resolved.yaml").seed == winner
    assert json.loads((run_dir / "run_info.json").read_text())["seed"] == winner
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line_and_leaves_it_as_it_was(tmp_path) -> None:
    """Issue: 6 to 67 lines of Hydra's or Lightning's errors. Hydra's log file is opened lazily
    (hydra/job_logging=run_folder), and the lock is the first write: one line naming the folder."""
    import shutil
    import subprocess
    import sys

    from dgggan_pl.launch.commands import clean_env

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs `unshare -m` (root, or user namespaces) to mount a read-only folder")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train = [
        sys.executable,
        "-m",
        "dgggan_pl.train",
        "experiment=pretrain",
        *SMOKE,
        f"hydra.run.dir={run_dir}",
    ]
    mount_read_only = f'mount -t tmpfs -o ro tmpfs "{run_dir}" && exec "$0" "$@"'
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount_read_only, *train],
        capture_output=True,
        text=True,
        timeout=600,
        env={**clean_env(os.environ), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == [
        f"error: cannot write to the run folder {run_dir} (Read-only file system): make it writable or choose "
        "another hydra.run.dir"
    ]
    assert list(run_dir.iterdir()) == []
