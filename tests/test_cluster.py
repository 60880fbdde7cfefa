"""Which rank a process is and which folder its launch writes to, read from the launcher's environment.

Pure functions of environment variables (no process group): every launcher Lightning knows, and the
refusals that keep a mismatched launch from hanging at the rendezvous.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dgggan_pl.config import ConfigError
from dgggan_pl.distributed.cluster import (
    GENERIC,
    LIGHTNING_LAUNCHER,
    SINGLE,
    RankLayout,
    check_layout,
    launch_folder_name,
    rank_layout,
    restart_count,
    starts_in_process,
)
from dgggan_pl.distributed.watch import FAILED, STOPPED, Abort, RankFailure, lost_a_peer
from dgggan_pl.launch.commands import clean_env
from dgggan_pl.runs import (
    RunFolderError,
    _job_name,
    _run_dir,
    raise_pending_resume_error,
    refuse_finished_run,
)
from dgggan_pl.startup import choose_checkpoint
from dgggan_pl.utils.exits import Interrupted


@pytest.fixture
def launch_env(monkeypatch):
    """Start from an environment without any launcher's variables; `set(**vars)` adds some."""
    for key in set(os.environ) - set(clean_env(os.environ)):
        monkeypatch.delenv(key)

    def set_env(**values: object) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))

    return set_env


def test_torchrun_ranks_come_from_torchrun(launch_env) -> None:
    launch_env(TORCHELASTIC_RUN_ID="job7", RANK=3, LOCAL_RANK=1, GROUP_RANK=1, WORLD_SIZE=4)
    assert rank_layout(num_nodes=2, devices_per_node=2) == RankLayout(3, 1, 1, 4, "torchelastic")
    with pytest.raises(
        ConfigError, match=r"trainer.num_nodes/trainer.devices: .*does not match the world size"
    ):
        check_layout(rank_layout(), num_nodes=1, devices_per_node=1)


def test_srun_ranks_come_from_slurm(launch_env) -> None:
    launch_env(SLURM_JOB_ID=55, SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=2, SLURM_NNODES=2, SLURM_PROCID=2)
    launch_env(SLURM_LOCALID=0, SLURM_NODEID=1, SLURM_JOB_NAME="train")
    layout = rank_layout(num_nodes=2, devices_per_node=2)
    assert layout == RankLayout(2, 0, 1, 4, "slurm")
    check_layout(layout, num_nodes=2, devices_per_node=2)
    with pytest.raises(ConfigError, match="HINT: Set `num_nodes=2`"):
        check_layout(layout, num_nodes=1, devices_per_node=2)


def test_a_hand_made_launch_is_ranked_by_node_not_by_local_rank(launch_env) -> None:
    """Node 1's first process is rank 2 (it used to act as rank 0: LOCAL_RANK=0)."""
    launch_env(MASTER_ADDR="10.0.0.1", MASTER_PORT=29500, NODE_RANK=1, LOCAL_RANK=0, WORLD_SIZE=4)
    layout = rank_layout(num_nodes=2, devices_per_node=2)
    assert layout == RankLayout(2, 0, 1, 4, GENERIC) and not layout.is_zero
    check_layout(layout, num_nodes=2, devices_per_node=2)
    with pytest.raises(
        ConfigError, match=r"do not match this launch \(WORLD_SIZE=4 but 1 x 2 = 2; NODE_RANK=1"
    ):
        check_layout(rank_layout(num_nodes=1, devices_per_node=2), num_nodes=1, devices_per_node=2)


def test_lightnings_own_launcher_and_single_processes(launch_env) -> None:
    parent = rank_layout(num_nodes=1, devices_per_node=2)
    assert parent == RankLayout(0, 0, 0, 2, LIGHTNING_LAUNCHER) and parent.starts_node_processes
    assert rank_layout() == RankLayout(0, 0, 0, 1, SINGLE)
    assert rank_layout(num_nodes=1, devices_per_node=4, in_process=True).world_size == 1  # ddp_spawn's parent
    assert starts_in_process("ddp_spawn") and starts_in_process({"start_method": "fork"})
    assert not starts_in_process("ddp_step_sync") and not starts_in_process("auto")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLURM_JOB_ID": "812", "SLURM_JOB_NAME": "train"}, "slurm-812"),
        ({"SLURM_JOB_ID": "813", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-800_3"),
        (
            {"SLURM_JOB_ID": "814", "SLURM_JOB_NAME": "interactive"},
            None,
        ),  # salloc + srun --pty: no job folder
        ({"TORCHELASTIC_RUN_ID": "exp/1 a"}, "torchrun-exp_1_a"),
        ({"TORCHELASTIC_RUN_ID": "none"}, None),  # torchrun's default --rdzv-id names nothing
        ({"SLURM_JOB_ID": "815", "TORCHELASTIC_RUN_ID": "x"}, "slurm-815"),  # torchrun inside sbatch: the job
        ({}, None),
    ],
)
def test_launch_folder_name(env: dict[str, str], name: str | None) -> None:
    assert launch_folder_name(env) == name


def test_restart_counts_follow_the_launcher_that_named_the_folder() -> None:
    assert restart_count({"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "2"}) == 2
    assert restart_count({"TORCHELASTIC_RUN_ID": "r", "TORCHELASTIC_RESTART_COUNT": "1"}) == 1
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 0  # no job id: not a launch that can restart


def test_run_folder_and_log_name_rules(launch_env, compose, tmp_path: Path) -> None:
    fresh = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    assert _run_dir(None, fresh) == fresh
    launch_env(SLURM_JOB_ID=4242, SLURM_JOB_NAME="train")
    assert _run_dir(None, fresh) == str(tmp_path / "runs" / "slurm-4242")  # the same folder after a requeue
    (tmp_path / "runs" / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert _run_dir("latest", fresh) == str(tmp_path / "runs" / "old")  # resume= wins over the job's folder
    assert _run_dir("nothing-here", fresh) == fresh
    with pytest.raises(FileNotFoundError, match="resume=nothing-here"):
        raise_pending_resume_error()

    cfg = compose(["trainer.num_nodes=2"])
    launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=1, NODE_RANK=1, LOCAL_RANK=0, WORLD_SIZE=2)
    assert _job_name(_root_=cfg).endswith("_rank1")


def test_a_requeued_job_continues_in_its_own_folder(launch_env, tmp_path: Path) -> None:
    """SLURM starts a requeued job again with the same id: it resumes from its last.ckpt, or starts over in its
    folder when it saved none; the same folder is refused to any other start (not restarted, other record)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.create({"resume": None, "ckpt_path": None})
    run = tmp_path / "slurm-77"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run_info.json").write_text('{"status": "running"}')
    launch_env(SLURM_JOB_ID=77, SLURM_JOB_NAME="train", SLURM_RESTART_COUNT=1)
    assert choose_checkpoint(plain, run) == (None, True)  # requeued before its first checkpoint: start over
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert choose_checkpoint(plain, run) == (str(run / "checkpoints" / "last.ckpt"), True)
    launch_env(SLURM_RESTART_COUNT=0)
    assert choose_checkpoint(plain, run) == (None, False)  # the job's first start finds a run there
    with pytest.raises(RunFolderError, match="already holds a run"):
        refuse_finished_run(run, resuming=False)
    (run / "run_info.json").write_text(
        '{"status": "requeued"}'
    )  # what the attempt that saved last.ckpt wrote
    assert choose_checkpoint(plain, run)[1]
    launch_env(SLURM_JOB_ID=78)
    assert choose_checkpoint(plain, run) == (None, False)  # another job's folder


def test_an_abort_says_who_and_how() -> None:
    stopped = Abort.of(1, Interrupted(signal.SIGTERM))
    assert (stopped.kind, stopped.status) == (STOPPED, 143)
    assert str(stopped.failure()) == "stopped because rank 1 was stopped by SIGTERM"
    failed = Abort.decode(Abort.of(0, ValueError("bad\nsecond line")).encode())
    assert (failed.kind, failed.status, failed.line) == (FAILED, 1, "bad")
    assert Abort.of(2, SystemExit(3)).status == 3
    assert isinstance(failed.failure(), RankFailure) and failed.failure().status == 1


def test_a_rank_reports_its_own_error_unless_it_only_lost_another_rank() -> None:
    hydra_style = RuntimeError("Error in call to target 'DGGGANGenerator':\nValueError('...')")
    hydra_style.__cause__ = ValueError("se_reduction=16 leaves no hidden channel\nat width 8")
    line = "Error in call to target 'DGGGANGenerator': (ValueError: se_reduction=16 leaves no hidden channel)"
    assert Abort.of(1, hydra_style).line == line  # the cause says why; the first line alone would not
    assert lost_a_peer(
        RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer")
    )
    assert not lost_a_peer(hydra_style) and not lost_a_peer(ValueError("gloo"))
