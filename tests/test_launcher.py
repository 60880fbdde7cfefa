"""hydra/launcher=ddp: command construction, environment cleaning, quoting, and a toy sweep (no torch jobs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

from dgggan_pl.config import config_dir
from dgggan_pl.launch.commands import (
    RANK_ENTRY_MODULE,
    AppTarget,
    clean_env,
    forwarded_hydra_overrides,
    job_command,
    process_count,
    quote_override_value,
    with_wandb_group,
)
from dgggan_pl.launch.devices import device_changes, gpu_slots, visible_gpu_ids
from dgggan_pl.launch.rank_entry import app_job_name, rank_overrides
from dgggan_pl.launch.runner import failed_job_left
from dgggan_pl.launch.summary import SweepJobsFailed, read_summary


def test_plugin_is_discovered_and_default_for_train() -> None:
    """The namespace package in src/ is found by Hydra, and train's sweeps use it without an override."""
    assert "DDPLauncher" in {cls.__name__ for cls in Plugins.instance().discover(Launcher)}
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "ddp"
    assert cfg.hydra.launcher._target_ == "hydra_plugins.dgggan_launchers.ddp_launcher.DDPLauncher"


def test_clean_env_drops_process_group_state() -> None:
    leaked = {
        "LOCAL_RANK": "0",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_PORT": "29500",
        "MASTER_ADDR": "x",
        "NODE_RANK": "0",
        "TORCHELASTIC_RUN_ID": "r",
        "SLURM_NTASKS": "8",
        "PATH": "/bin",
        "WANDB_MODE": "offline",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    assert clean_env(leaked) == {"PATH": "/bin", "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "0,1"}


@pytest.mark.parametrize(
    "value",
    ["/tmp/sweep/0_ablation=no_grad,debug=smoke", "/a b/it's", "/x\\'y", "/ends\\", "${not.resolved}"],
)
def test_quoted_run_dir_survives_hydra_parsing(value: str) -> None:
    override = OverridesParser.create().parse_override(f"hydra.run.dir={quote_override_value(value)}")
    assert not override.is_sweep_override()
    if "${" not in value:
        assert override.value() == value


@pytest.mark.parametrize(
    ("devices", "accelerator", "strategy", "cuda", "expected"),
    [
        (2, "cpu", "ddp_find_unused_parameters_true", 0, 2),
        ("4", "gpu", "ddp", 8, 4),
        ([0, 3], "gpu", "ddp", 8, 2),
        ("auto", "gpu", "ddp", 8, 8),
        (-1, "auto", "ddp", 2, 2),
        (4, "gpu", "ddp_spawn_find_unused_parameters_true", 8, 1),
        ("auto", "cpu", "auto", 8, 1),
        ("auto", "auto", "auto", 0, 1),
    ],
)
def test_process_count(devices: object, accelerator: str, strategy: str, cuda: int, expected: int) -> None:
    assert process_count(devices, accelerator, strategy, cuda) == expected


@pytest.mark.parametrize(("devices", "accelerator"), [("auto", "gpu"), (0, "cpu"), (-1, "cpu"), (-1, "gpu")])
def test_process_count_refuses_to_guess(devices: object, accelerator: str) -> None:
    with pytest.raises(ValueError, match="trainer.devices"):
        process_count(devices, accelerator, "ddp", cuda_device_count=0)


def test_job_command_one_and_many_processes(tmp_path: Path) -> None:
    app = AppTarget(module="dgggan_pl.train")
    out = tmp_path / "0_ablation=no_grad"
    single = job_command(app, ["ablation=no_grad"], out, 0, nproc=1, python="py")
    assert single[:4] == ["py", "-m", "dgggan_pl.train", "ablation=no_grad"]
    assert single[4:] == [f"hydra.run.dir='{out}'", "hydra.job.num=0"]
    multi = job_command(app, ["ablation=no_grad"], out, 3, nproc=2, python="py")
    assert multi[:8] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        RANK_ENTRY_MODULE,
        "dgggan_pl.train",
    ]
    assert multi[8:] == ["ablation=no_grad", f"hydra.run.dir='{out}'", "hydra.job.num=3"]
    script = AppTarget(script=tmp_path / "app.py")
    assert job_command(script, [], out, 0, nproc=1, python="py")[1] == str(tmp_path / "app.py")


def test_rank_overrides_keep_nonzero_ranks_off_hydra_files() -> None:
    assert rank_overrides("train", 0) == []
    assert rank_overrides("train", 1) == ["hydra.output_subdir=null", "hydra.job.name=train_rank1"]
    assert app_job_name("dgggan_pl.train") == "train" and app_job_name("/x/my_app.py") == "my_app"


def test_wandb_group_only_where_the_job_logs_to_wandb() -> None:
    with_wandb = OmegaConf.create({"logger": {"wandb": {"group": None}}})
    without = OmegaConf.create({"logger": None})
    assert with_wandb_group(["a=1"], with_wandb, "logger.wandb.group", "sw/1") == [
        "a=1",
        "logger.wandb.group='sw/1'",
    ]
    assert with_wandb_group(["a=1"], without, "logger.wandb.group", "sw/1") == ["a=1"]
    own = ["logger.wandb.group=mine"]
    assert with_wandb_group(own, with_wandb, "logger.wandb.group", "sw/1") == own


TOY_APP = """
import json, os, signal, subprocess, sys, time
import hydra
from hydra.core.hydra_config import HydraConfig

IGNORE = "import signal, time; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]; time.sleep(600)"

@hydra.main(config_path="conf", config_name="cfg", version_base="1.3")
def main(cfg):
    out = HydraConfig.get().runtime.output_dir
    env = {k: os.environ.get(k) for k in ("LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE")}
    record = {"value": cfg.value, "env": env, "group": cfg.logger.wandb.group, "mode": str(HydraConfig.get().mode)}
    record |= {"flag": os.environ.get("MY_FLAG"), "cwd": os.getcwd()}
    if cfg.value in ("hang", "stubborn"):  # a grandchild that ignores every stop signal, like a stuck rank
        record["orphan_pid"] = subprocess.Popen([sys.executable, "-c", IGNORE]).pid
    with open(os.path.join(out, "job.json"), "w") as handle:
        json.dump(record, handle)
    if cfg.value == "bad":
        raise ValueError("deliberate failure")
    if cfg.value == "stubborn":
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
    if cfg.value in ("hang", "stubborn"):
        time.sleep(600)

if __name__ == "__main__":
    main()
"""

TOY_CONFIG = """
defaults:
  - override hydra/launcher: ddp
value: a
trainer: {devices: 1, num_nodes: 1, accelerator: cpu, strategy: auto}
logger: {wandb: {group: null}}
hydra:
  sweep:
    dir: SWEEP_DIR
    subdir: ${hydra.job.num}_${hydra.job.override_dirname}
"""


def _toy_app(tmp_path: Path) -> Path:
    """A toy Hydra app using conf/hydra/launcher/ddp.yaml in `tmp_path`; returns its sweep folder."""
    (tmp_path / "conf" / "hydra" / "launcher").mkdir(parents=True)
    shutil.copy(config_dir() / "hydra" / "launcher" / "ddp.yaml", tmp_path / "conf" / "hydra" / "launcher")
    sweep = tmp_path / "sweep"
    (tmp_path / "conf" / "cfg.yaml").write_text(TOY_CONFIG.replace("SWEEP_DIR", str(sweep)))
    (tmp_path / "app.py").write_text(TOY_APP)
    return sweep


@pytest.mark.slow
def test_toy_sweep_runs_each_job_fresh_and_reports_failure(tmp_path: Path) -> None:
    """Three 1-process jobs of a toy app: one fails, the others complete; env leaks never reach a job."""
    sweep = _toy_app(tmp_path)
    env = {**os.environ, "LOCAL_RANK": "0", "MASTER_PORT": "1234", "WORLD_SIZE": "2"}
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "value=a,bad,c"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    # the sweep ends with one line, not a traceback through Hydra's sweeper
    assert proc.stderr.splitlines()[-1].startswith("error: 1 of 3 sweep jobs failed: #1 (value=bad)")
    assert "basic_sweeper" not in proc.stderr + proc.stdout
    records = read_summary(sweep)
    assert [(r.num, r.status, r.processes) for r in records] == [
        (0, "completed", 1),
        (1, "failed", 1),
        (2, "completed", 1),
    ]
    jobs = sorted(sweep.glob("*/job.json"))
    assert [p.parent.name for p in jobs] == ["0_value=a", "1_value=bad", "2_value=c"]
    for path in jobs:
        record = json.loads(path.read_text())
        assert record["env"] == {"LOCAL_RANK": None, "MASTER_PORT": None, "WORLD_SIZE": None}
        assert record["group"] == str(sweep) and record["mode"] == "RunMode.RUN"
        assert (path.parent / ".hydra" / "overrides.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py", "conf", "sweep"]  # one sweep folder


def test_a_failed_job_points_to_what_it_left(tmp_path: Path) -> None:
    recorded, bare = tmp_path / "recorded", tmp_path / "bare"
    recorded.mkdir()
    (recorded / "run_info.json").write_text("{}")
    bare.mkdir()
    assert failed_job_left(str(recorded)) == f"its log and run_info.json: {recorded}"
    assert failed_job_left(str(bare)) == f"it wrote no run_info.json; its folder: {bare}"
    gone = "it refused to start and kept no folder: its own error line is in the output above"
    assert failed_job_left(str(tmp_path / "removed")) == gone and failed_job_left(None) == gone


def test_a_job_that_cannot_be_composed_fails_alone(tmp_path: Path) -> None:
    """Sweepers that do not pre-validate overrides: the bad job is recorded as failed, nothing is started."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import HydraContext
    from hydra.utils import instantiate

    sweep = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    launcher.setup(hydra_context=HydraContext(loader, Callbacks()), task_function=lambda _: None, config=cfg)
    with pytest.raises(
        SweepJobsFailed, match=r"1 of 1 sweep jobs failed: #0 \(ablation=does_not_exist\): config"
    ):
        launcher.launch([["ablation=does_not_exist"]], initial_job_idx=0)
    (record,) = read_summary(sweep)
    assert record.status == "failed" and record.command == [] and "does_not_exist" in record.error


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """A failed test leaves no sweep behind: SIGINT (the sweep kills its jobs' groups), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    """Wait until `path` exists (a busy machine needs long to start Python with torch); fail if `proc` ends."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "value"),
    [(signal.SIGINT, "hang"), (signal.SIGTERM, "stubborn")],  # SIGHUP takes the same path
)
def test_interrupted_toy_sweep_leaves_no_process_and_says_so(tmp_path: Path, signum: int, value: str) -> None:
    """A signal to the sweep reaches the running job; after the grace period nothing of its process group is
    left (not even a grandchild that ignores signals, nor a job that does); the summary says what happened."""
    sweep = _toy_app(tmp_path)
    sweep_proc = subprocess.Popen(
        [sys.executable, "app.py", "-m", f"value={value},never", "hydra.launcher.kill_grace_s=2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_file = sweep / f"0_value={value}" / "job.json"
    try:
        _wait_for(job_file, sweep_proc)
        orphan = json.loads(job_file.read_text())["orphan_pid"]
        assert _alive(orphan)
        sweep_proc.send_signal(signum)
        _, stderr = sweep_proc.communicate(timeout=300)
    finally:
        _stop(sweep_proc)
    assert sweep_proc.returncode == -signum, stderr[-2000:]  # ends the way the signal would have ended it
    assert not _alive(orphan)
    records = read_summary(sweep)
    assert [(r.num, r.status) for r in records] == [(0, "interrupted"), (1, "not started")]
    assert signal.Signals(signum).name in records[0].error
    assert not (sweep / "1_value=never").exists()


@pytest.mark.slow
def test_command_line_hydra_overrides_reach_the_jobs(tmp_path: Path) -> None:
    """`+hydra.job.env_set...`, `hydra.job.chdir`, `hydra/job_logging`, `hydra.verbose` typed for a sweep are
    in each job's own `.hydra/hydra.yaml` and take effect there; sweep-only keys are not forwarded."""
    sweep = _toy_app(tmp_path)
    typed = [
        "+hydra.job.env_set.MY_FLAG=on",
        "hydra.job.chdir=true",
        "hydra/job_logging=disabled",
        "hydra.verbose=true",
    ]
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "value=a", *typed],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job_dir in sorted(sweep.glob("[0-9]_*")):
        record = json.loads((job_dir / "job.json").read_text())
        assert record["flag"] == "on" and Path(record["cwd"]) == job_dir
        hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
        assert set(typed) <= set(hydra_cfg.overrides.hydra)
        assert not [
            o
            for o in hydra_cfg.overrides.hydra
            if o.startswith(("hydra.sweep", "hydra/launcher", "hydra.mode=MULTIRUN"))
        ]
        assert hydra_cfg.runtime.choices["hydra/job_logging"] == "disabled" and hydra_cfg.verbose is True
        assert not (job_dir / "app.log").exists()  # job_logging=disabled writes no log file


def test_forwarded_hydra_overrides_drop_sweep_only_keys() -> None:
    typed = [
        "hydra.sweep.dir=/x",
        "hydra/launcher=ddp",
        "hydra.launcher.parallel_jobs=2",
        "hydra.mode=MULTIRUN",
        "hydra.run.dir=/y",
        "hydra/sweeper=basic",
        "hydra.job.num=3",
        "+hydra.job.env_set.A=1",
        "hydra.job.chdir=true",
        "hydra.job_logging.root.level=DEBUG",
        "~hydra.callbacks.x",
        "hydra.verbose=[a,b]",
    ]
    assert forwarded_hydra_overrides(typed) == typed[7:]


KEYS = {
    "devices": "trainer.devices",
    "strategy": "trainer.strategy",
    "num_nodes": "trainer.num_nodes",
    "accelerator": "trainer.accelerator",
}
DEFAULT_TRAINER = {"devices": 1, "accelerator": "auto", "strategy": "auto"}


@pytest.mark.parametrize(
    ("overrides", "trainer", "cuda", "expected"),
    [
        (
            ["ablation=no_grad"],
            DEFAULT_TRAINER,
            8,
            {"devices": 8, "strategy": "ddp_find_unused_parameters_true"},
        ),
        (
            ["ablation=no_grad"],
            {"devices": 1, "accelerator": "gpu"},
            2,
            {"devices": 2, "strategy": "ddp_find_unused_parameters_true"},
        ),
        (["ablation=no_grad"], DEFAULT_TRAINER, 1, {}),  # one GPU: nothing to widen
        (["ablation=no_grad"], DEFAULT_TRAINER, 0, {}),  # CPU only: one process
        (["ablation=no_grad"], {"devices": 1, "accelerator": "cpu"}, 8, {}),
        (["trainer.devices=1"], DEFAULT_TRAINER, 8, {}),  # the user chose
        (["trainer=gpu"], DEFAULT_TRAINER, 8, {}),
        (
            ["trainer=ddp"],
            {"devices": -1, "accelerator": "gpu", "strategy": "ddp_find_unused_parameters_true"},
            8,
            {},
        ),
        (["ablation=none"], {"devices": 1, "accelerator": "auto", "strategy": "ddp"}, 4, {"devices": 4}),
    ],
)
def test_all_gpus_rule(overrides: list[str], trainer: dict, cuda: int, expected: dict) -> None:
    changes = device_changes(
        overrides,
        trainer,
        cuda,
        keys=KEYS,
        all_gpus=True,
        gpus_per_job=None,
        ddp_strategy="ddp_find_unused_parameters_true",
    )
    assert changes == expected
    final = {**trainer, **changes}
    nproc = process_count(final["devices"], final["accelerator"], final.get("strategy", "auto"), cuda)
    assert nproc == (cuda if changes else (1 if trainer["devices"] == 1 else cuda))


def test_all_gpus_off_and_gpus_per_job() -> None:
    off = device_changes(
        [], DEFAULT_TRAINER, 8, keys=KEYS, all_gpus=False, gpus_per_job=None, ddp_strategy="ddp"
    )
    assert off == {}
    two = device_changes([], DEFAULT_TRAINER, 8, keys=KEYS, all_gpus=True, gpus_per_job=2, ddp_strategy="ddp")
    assert two == {"devices": 2, "strategy": "ddp"}
    with pytest.raises(ValueError, match="trainer.devices is set from hydra.launcher.gpus_per_job"):
        device_changes(
            ["trainer.devices=4"],
            DEFAULT_TRAINER,
            8,
            keys=KEYS,
            all_gpus=True,
            gpus_per_job=2,
            ddp_strategy="ddp",
        )
    with pytest.raises(ValueError, match="parallel_jobs for CPU jobs"):
        device_changes(
            [],
            {"devices": 2, "accelerator": "cpu"},
            8,
            keys=KEYS,
            all_gpus=True,
            gpus_per_job=2,
            ddp_strategy="ddp",
        )


def test_gpu_slots_are_disjoint() -> None:
    ids = visible_gpu_ids({}, 8)
    assert ids == [str(i) for i in range(8)]
    assert gpu_slots(2, None, ids) == [{"CUDA_VISIBLE_DEVICES": v} for v in ("0,1", "2,3", "4,5", "6,7")]
    assert gpu_slots(3, None, ids) == [{"CUDA_VISIBLE_DEVICES": "0,1,2"}, {"CUDA_VISIBLE_DEVICES": "3,4,5"}]
    assert gpu_slots(2, 1, ids) == [{"CUDA_VISIBLE_DEVICES": "0,1"}]
    assert gpu_slots(None, None, ids) == [{}] and gpu_slots(None, 3, []) == [{}, {}, {}]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "5,GPU-ab,7"}, 3) == ["5", "GPU-ab", "7"]
    assert gpu_slots(1, None, visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "5,7"}, 2)) == [
        {"CUDA_VISIBLE_DEVICES": "5"},
        {"CUDA_VISIBLE_DEVICES": "7"},
    ]
    with pytest.raises(ValueError, match="gpus_per_job=4 but this machine shows 2"):
        gpu_slots(4, None, ["0", "1"])
    with pytest.raises(ValueError, match="parallel_jobs=3"):
        gpu_slots(2, 3, ids[:4])
