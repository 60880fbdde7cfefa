"""The GPU check (scripts/gpu_check.py, benchmarks/gpu_check/, docs/gpu.md): the dry run of every phase on the
CPU, offline, with an empty TORCH_HOME, with and without a data folder; its result file (benchmarks/record.py);
the FLOP count behind its TFLOP/s figures; its callbacks and the carried data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # as scripts/gpu_check.py does: the check is not in the package

import render  # noqa: E402
from gpu_check import cli, phases  # noqa: E402
from gpu_check.callbacks import SYNC_WARNING, PhaseClock, count_sync_warnings  # noqa: E402
from gpu_check.cli import load_settings, main  # noqa: E402
from gpu_check.data import MIB, prepare_data, training_dirs  # noqa: E402
from gpu_check.flops import iteration_flops  # noqa: E402
from gpu_check.phases import PHASES, Check, Phase  # noqa: E402
from gpu_check.report import NO_DEVICE, Destination  # noqa: E402
from record import FORMAT  # noqa: E402

DATA_PHASES = ["validation", "learning_curve", "upscale"]  # the phases that read the data folder


def _no_network(*args: object, **kwargs: object) -> None:
    raise OSError("network blocked by the test")


def test_dry_run_runs_every_phase_offline(tmp_path, monkeypatch, data_dir, one_torch_thread) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty: no VGG19, AlexNet or NIQE weights
    monkeypatch.setenv("DGGGAN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the dry run sets it; monkeypatch restores it
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)  # every URL fetch resolves a name first
    monkeypatch.setattr(socket, "create_connection", _no_network)
    out = tmp_path / "check"

    assert main(["--dry-run", "--out", str(out)]) == 0

    record = json.loads((out / "gpu_check_dry_run.json").read_text())  # benchmarks/record.py's result file
    assert (
        record["format"] == FORMAT
        and record["command"] == f"python scripts/gpu_check.py --dry-run --out {out}"
    )
    report = record["figures"]
    assert report["header"]["device"] == NO_DEVICE and record["title"] == f"GPU check: {NO_DEVICE}"
    phases = report["phases"]
    assert list(phases) == list(PHASES)
    assert {name: phase["status"] for name, phase in phases.items()} == dict.fromkeys(PHASES, "ok")
    figures = {name: phase["figures"] for name, phase in phases.items()}

    assert figures["flops"]["iteration_tflop"] > figures["flops"]["generator_step_tflop"] > 0
    variants = {k: v for k, v in figures["throughput"].items() if isinstance(v, dict)}
    assert set(variants) == {"fp32", "tf32", "bf16", "bf16_channels_last", "compile"}
    for name, variant in variants.items():
        assert variant["iterations_per_s"] > 0 and variant["achieved_tflops"] > 0, name
        assert variant["cudnn_benchmark"] is True and variant["timed_iterations"] >= 1
    assert variants["bf16"]["precision"] == "bf16-mixed" and variants["fp32"]["precision"] == "32-true"
    assert figures["bf16_losses"]["all_finite"] and "loss_g" in figures["bf16_losses"]["bf16"]
    assert figures["host_syncs"]["syncs_per_iteration"] is None  # no device to wait for: n/a
    assert figures["ddp"]["process_group"] == "gloo" and figures["ddp"]["world_size"] == 1
    assert figures["validation"]["psnr_difference"] == 0 and "niqe_cpu" in figures["validation"]
    curve = figures["learning_curve"]
    assert curve["curve"] and {"Set5", "Set14"} == set(curve["bicubic"])
    assert "val/Set14/psnr" in curve["curve"][-1]
    assert figures["upscale"]["fp32_first_s"] > 0 and (out / "upscale" / "0853_fp32.png").is_file()
    resume = figures["train_resume"]
    assert resume["killed_returncode"] == -9 and resume["resumed_returncode"] == 0
    assert resume["iteration_of_last_ckpt_at_kill"] < resume["final_iteration"]

    table = (out / "gpu_check.md").read_text()
    assert NO_DEVICE in table and "| throughput bf16_channels_last |" in table
    assert not any((tmp_path / "torch").rglob("*.*"))  # nothing was downloaded into TORCH_HOME


def test_iteration_flops_follow_the_derivation() -> None:
    """docs/design.md#flops-of-one-iteration: per sample 3 F_G + 3 F_V + 14 F_D per critic (two critics)."""
    from dgggan_pl.config import compose_config

    cfg = compose_config(["experiment=full", "loss.terms.percept.loss.weights=random", "paths.output_dir=."])
    flops = iteration_flops(cfg)
    g, v, d = flops["generator_forward"], flops["perceptual_forward"], flops["critic_forward"]
    assert flops["generator_step"] == pytest.approx(3 * g + 3 * v + 2 * 2 * d, rel=0.01)
    assert flops["critic_step"] == pytest.approx(2 * 12 * d, rel=0.01)
    assert flops["iteration"] == flops["critic_step"] + flops["generator_step"]
    assert flops["iteration"] / 1e12 == pytest.approx(10.03, abs=0.01)  # batch 16, LR 48 -> HR 192


def test_phase_clock_times_after_warmup_and_stops_at_its_budget(tmp_path) -> None:
    clock = PhaseClock(str(tmp_path / "clock.json"), budget_s=0.0, warmup=1)
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(should_stop=False, precision="32-true", world_size=1)
    clock.on_fit_start(trainer, module)  # type: ignore[arg-type]
    clock.on_train_batch_end(trainer, module)  # type: ignore[arg-type]
    assert trainer.should_stop  # budget 0: stops after the iteration that ran
    clock.on_train_batch_end(trainer, module)  # type: ignore[arg-type]
    clock.on_train_end(trainer, module)  # type: ignore[arg-type]
    record = json.loads((tmp_path / "clock.json").read_text())
    assert record["iterations"] == 2 and record["timed_iterations"] == 1 and record["stopped_by_budget"]
    assert record["iterations_per_s"] > 0 and "peak_memory_gib" not in record


def test_sync_warnings_are_counted_by_where_they_happen() -> None:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        warnings.warn(f"{SYNC_WARNING}. For example", UserWarning, stacklevel=1)
        warnings.warn(f"{SYNC_WARNING}. For example", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    examples: dict[str, int] = {}
    assert count_sync_warnings(records, examples) == 2
    assert list(examples.values()) == [1, 1] and all(k.startswith("test_gpu_check.py:") for k in examples)


def test_prepared_data_takes_the_largest_crop_that_fits(tmp_path, data_dir) -> None:
    _, spec, _ = load_settings(dry_run=False)
    spec = OmegaConf.merge(spec, {"images_per_set": 1, "crop_sizes": [128, 64], "eval_sets": ["Set5"]})
    small = prepare_data(data_dir, tmp_path / "data", spec, budget_bytes=None)
    assert small["crop_size"] == 128 and small["train_images"] == 2
    assert [p.name for p in (tmp_path / "data" / "sr-benchmarks" / "Set5" / "HR").iterdir()] == ["baby.png"]
    assert (tmp_path / "data" / "DIV2K-sample" / "LR_bicubic" / "X4" / "0853x4.png").is_file()
    assert [p.parent.name for p in training_dirs(tmp_path / "data", spec)] == ["train-crops"] * 2
    assert [p.name for p in training_dirs(data_dir, spec)] == ["HR", "HR"]  # a whole data folder: the sets
    fitted = prepare_data(data_dir, tmp_path / "data", spec, budget_bytes=small["bytes"] - 1)
    assert fitted["crop_size"] == 64 and fitted["bytes"] < small["bytes"]
    with pytest.raises(ValueError, match="device_tree_mib"):
        prepare_data(data_dir, tmp_path / "data", spec, budget_bytes=int(0.01 * MIB))
    assert not (tmp_path / "data").exists()  # refused: nothing half-written is left to carry


def test_phases_run_within_the_total_budget_and_failures_do_not_stop_the_rest(tmp_path, monkeypatch) -> None:
    def broken(check: Check, spec: object) -> dict:
        raise RuntimeError("only on a GPU")

    def never(check: Check, spec: object) -> dict:
        raise AssertionError("a phase without its data must not start")

    phases = {
        "broken": Phase(broken),
        "no_data": Phase(never, lambda check, spec: ["sr-benchmarks/Set5/HR"]),
        "fails": Phase(lambda check, spec: {"passed": False}),
        "fine": Phase(lambda check, spec: {"passed": True, "value": 1.5}),
        "too_long": Phase(never),
    }
    monkeypatch.setattr(cli, "PHASES", phases)
    settings = OmegaConf.create({"total_budget_s": 10, "fine": {"budget_s": 1}, "too_long": {"budget_s": 60}})
    check = Check(settings, tmp_path, torch.device("cpu"), None, OmegaConf.create({}), True, 790.0)
    destination = Destination(tmp_path, True, "python scripts/gpu_check.py --dry-run", (tmp_path,))
    results = cli.run_check(check, list(phases), {"device": NO_DEVICE}, destination)

    status = {r["name"]: r["status"] for r in results}
    assert status == {
        "broken": "error",
        "no_data": "skipped",
        "fails": "failed",
        "fine": "ok",
        "too_long": "skipped",
    }
    by_name = {r["name"]: r for r in results}
    assert by_name["broken"]["reason"] == "RuntimeError: only on a GPU"
    assert by_name["no_data"]["reason"].startswith("needs sr-benchmarks/Set5/HR of a data folder")
    assert by_name["too_long"]["reason"].startswith("total budget")
    report = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())[
        "figures"
    ]  # written after each phase
    assert list(report["phases"]) == list(phases)
    assert "| fine | pass | value 1.5 |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("source", ["absent", "empty"])
def test_dry_run_without_data_skips_each_phase_that_needs_it_in_one_line(
    source: str, tmp_path, monkeypatch, capsys
) -> None:
    """One rule for every phase that reads the data folder: skipped in one line naming the path, exit status 0.
    Before: the validation phase errored (exit 1, a 12-line traceback) while the other two were skipped; with an
    empty $DGGGAN_DATA_DIR, preparing the toy folder raised FileNotFoundError before any phase ran."""
    if source == "empty":
        (tmp_path / "data").mkdir()
    monkeypatch.setenv("DGGGAN_DATA_DIR", str(tmp_path / "data"))  # no data to prepare the toy folder from
    monkeypatch.setattr(cli, "DEFAULT_CARRIED", tmp_path / "absent_carried")
    out = tmp_path / "check"

    assert main(["--dry-run", "--out", str(out), "--only", *DATA_PHASES]) == 0

    printed = capsys.readouterr()
    said = printed.out.splitlines()
    assert [line.startswith("gpu_check: no toy data folder") for line in said[:1]] == [source == "empty"]
    assert not (out / "data").exists()  # nothing half-copied left behind
    lines = [line for line in said if line.startswith("gpu_check: phase")]
    assert [line.split()[2:4] for line in lines] == [[name, "skipped:"] for name in DATA_PHASES]
    assert "sr-benchmarks/Set5/HR" in lines[0] and "0853x4.png" in lines[2] and "--prepare-data" in lines[1]
    assert "Traceback" not in printed.err
    phases = json.loads((out / "gpu_check_dry_run.json").read_text())["figures"]["phases"]
    assert {name: phase["status"] for name, phase in phases.items()} == dict.fromkeys(DATA_PHASES, "skipped")


def test_a_data_folder_lacking_a_phase_s_path_names_it(tmp_path, data_dir) -> None:
    """With a data folder, a phase runs only if every path it reads is there; else its skip names the first."""
    settings, spec, _ = load_settings(dry_run=True)
    partial = tmp_path / "data"
    (partial / "sr-benchmarks" / "Set5" / "HR").mkdir(parents=True)  # Set5 without its LR images
    check = Check(settings, tmp_path, torch.device("cpu"), partial, spec, True, 790.0)
    reason = cli.skip_reason(check, "validation", 0.0, 1.0)
    assert reason is not None and reason.startswith(
        f"needs sr-benchmarks/Set5/LR_bicubic/X4, which the data folder {partial}"
    )
    whole = Check(settings, tmp_path, torch.device("cpu"), data_dir, spec, True, 790.0)
    assert [cli.skip_reason(whole, name, 0.0, 1.0) for name in DATA_PHASES] == [None] * 3


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: ~10 s on a loaded box
def test_script_runs_from_the_source_tree_and_records_its_result(tmp_path) -> None:
    """`PYTHONPATH=src python scripts/gpu_check.py`: the script finds the check in benchmarks/ (not itself), and
    `--record DIR` writes a result file that benchmarks/render.py renders into docs/benchmarks.md's page."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DGGGAN_DATA_DIR": str(tmp_path / "absent")}
    args = ["--dry-run", "--out", str(tmp_path / "out"), "--record", str(tmp_path / "results")]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), *args, "--only", *DATA_PHASES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("gpu_check: phase")]
    assert len(skipped) == 3 and all(" skipped: needs " in line for line in skipped), done.stdout
    (result,) = render.load_results(tmp_path / "results")
    page = render.section(result)
    assert result["name"] == "gpu_check_dry_run" and "| `phases.upscale.status` | skipped |" in page


@pytest.mark.slow  # about 9 s of composing; run it before spending device time (docs/gpu.md)
def test_device_profile_composes_every_training_as_specified(tmp_path, monkeypatch, data_dir) -> None:
    """The device run cannot be rehearsed on a CPU, but its configs can: a typo must not cost device time."""
    from dgggan_pl.config import compose_config

    composed: dict[str, object] = {}
    monkeypatch.setattr(phases, "_train", lambda cfg: composed.setdefault(cfg.paths.output_dir, cfg) and {})
    monkeypatch.setattr(phases, "bicubic_psnr", lambda cfg: {})

    cli_runs = []

    def train_process(overrides: list[str], deadline: float) -> int:
        cli_runs.append(compose_config(overrides))
        return 0

    monkeypatch.setattr(phases, "_train_process", train_process)
    settings, spec, peak = load_settings(dry_run=False)
    check = phases.Check(settings, tmp_path, torch.device("cpu"), data_dir, spec, False, peak)
    for name in ("throughput", "host_syncs", "ddp", "learning_curve", "train_resume"):
        phases.PHASES[name].run(check, settings[name])

    configs = {Path(str(key)).name: cfg for key, cfg in composed.items()}
    for cfg in [*configs.values(), *cli_runs]:
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark  # type: ignore[attr-defined]
        assert cfg.metrics.lpips == "disabled" and cfg.data.num_workers == 8  # type: ignore[attr-defined]
        assert cfg.data._target_.endswith("SRDataModule") and cfg.model.generator.channels == 64  # type: ignore[attr-defined]
    full = configs["throughput_fp32"]
    assert (full.data.batch_size, full.hr_patch_size, full.loss.terms.percept.loss.weights) == (
        16,
        192,
        "random",
    )
    assert (
        full.trainer.precision == "32-true" and configs["throughput_bf16"].trainer.precision == "bf16-mixed"
    )
    assert (
        configs["throughput_compile"].compile
        and "channels_last" in configs["throughput_bf16_channels_last"].callbacks
    )
    assert configs["ddp"].trainer.strategy == "ddp_step_sync" and configs["ddp"].trainer.devices == 1
    curve = configs["learning_curve"]
    assert curve.task_name == "pretrain" and curve.data.val_sets == ["Set5", "Set14"]
    assert [Path(d).name for d in curve.data.train_source.hr_dirs] == [
        "HR",
        "HR",
    ]  # whole sets: no crops here
    killed, resumed = cli_runs
    assert "kill" in killed.callbacks and "kill" not in resumed.callbacks and resumed.resume
    assert killed.iterations == 30 and killed.trainer.limit_train_batches == 10  # debug=limit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            "error: no CUDA device (torch.cuda.is_available() is False); use --dry-run to rehearse on the CPU",
        ),
        (
            ["--dry-run", "--data", "absent"],
            "error: --data absent: no such folder (prepare it with --prepare-data)",
        ),
    ],
)
def test_refusals_are_one_line_and_write_nothing(args, message, tmp_path, monkeypatch, capsys) -> None:
    """Before: argparse's usage block plus the error (4 lines); `--data` missing left the --out folder behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "out").exists()
