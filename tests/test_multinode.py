"""Two "nodes" on one machine (gloo on CPU, tiny models): one run, one folder, one record, and no rank left
waiting when another refuses, fails, is stopped, or cannot see the run folder.

Each node is its own process tree, started as a cluster would start it: `torch.distributed.run --nnodes=2
--node_rank=k` (an elastic agent per node), or the bare processes with `MASTER_ADDR MASTER_PORT NODE_RANK
LOCAL_RANK WORLD_SIZE` set by hand (Lightning's generic environment; `srun` starts processes the same way, with
no agent that could stop the others). Waits are bounded far below the configured process-group and start-up
timeouts, so a rank that only ended by a timeout fails the test. docs/multinode.md quotes the seconds these runs
take.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dgggan_pl.launch.commands import clean_env

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
# No test phase and no LPIPS network: the launches, not the metrics, are under test.
TRAIN = [
    "experiment=pretrain",
    "debug=smoke",
    "logger=none",
    "callbacks.image_panels=null",
    "data.test_sources={}",
    "metrics.lpips=disabled",
]
# Far above anything these runs need: a rank that ends only through a timeout fails the test (RUN_BUDGET_S).
TIMEOUTS = ["distributed.timeout_s=900", "distributed.startup_timeout_s=900"]
RUN_BUDGET_S = 400  # one launch on a loaded 2-core machine, imports included
HYDRA_FILES = ["config.yaml", "hydra.yaml", "overrides.yaml"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_env(**extra: object) -> dict[str, str]:
    env = {**clean_env(os.environ), "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC_DIR}{os.pathsep}{TESTS_DIR}"}
    return env | {key: str(value) for key, value in extra.items()}


@dataclass
class Node:
    """One node's process (torchrun's agent, or the rank itself) and its output."""

    popen: subprocess.Popen
    log: Path
    started: float
    ended: float | None = None

    def wait(self, timeout: float = RUN_BUDGET_S) -> int:
        code = self.popen.wait(timeout=timeout)
        self.ended = self.ended or time.monotonic()
        return code

    @property
    def seconds(self) -> float:
        assert self.ended is not None
        return round(self.ended - self.started, 1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if line.startswith("error: ")]


def start(command: list[str], env: dict[str, str], cwd: Path, name: str) -> Node:
    log = cwd / f"{name}.log"
    with log.open("w") as stream:
        popen = subprocess.Popen(command, env=env, cwd=cwd, stdout=stream, stderr=subprocess.STDOUT)
    return Node(popen, log, time.monotonic())


def torchrun_nodes(cwd: Path, per_node: int, run_id: str, overrides: list[str]) -> list[Node]:
    port = free_port()
    nodes = []
    for node in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
            f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1", f"--master_port={port}",
            f"--rdzv-id={run_id}", "-m", "dgggan_pl.train", *TRAIN, *TIMEOUTS,
            "trainer.num_nodes=2", f"trainer.devices={per_node}", *overrides,
        ]  # fmt: skip
        nodes.append(start(command, node_env(), cwd, f"{run_id}-node{node}-{len(list(cwd.glob('*.log')))}"))
    return nodes


def generic_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dgggan_pl.train", *TRAIN, *TIMEOUTS, "trainer.num_nodes=2", *overrides]


def generic_env(node: int, port: int) -> dict[str, str]:
    return node_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=node, LOCAL_RANK=0, WORLD_SIZE=2)


def generic_nodes(cwd: Path, overrides: list[str], name: str) -> list[Node]:
    """Two single-process nodes started by hand: no agent, no torchrun."""
    port = free_port()
    return [start(generic_command(overrides), generic_env(n, port), cwd, f"{name}-node{n}") for n in (0, 1)]


def finish(nodes: list[Node], timeout: float = RUN_BUDGET_S) -> list[int]:
    codes = [node.wait(timeout) for node in nodes]
    print("exit codes and seconds:", [(code, node.seconds) for code, node in zip(codes, nodes, strict=True)])
    return codes


def only_run(root: Path) -> Path:
    (run,) = list(root.iterdir())  # one folder for the whole launch
    return run


def ranks(run: Path, world_size: int) -> list[dict]:
    records = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert [r["global_rank"] for r in records] == list(range(world_size))
    return records


def assert_one_record(run: Path, world_size: int, steps: int) -> dict:
    """One completed run record, every rank on its config and weights, no lock left behind."""
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed", info["error"]
    records = ranks(run, world_size)
    assert {r["config_sha256"] for r in records} == {info["config_sha256"]}
    assert {r["global_step"] for r in records} == {steps}
    assert all(r["final_weights_sha256"] == records[0]["final_weights_sha256"] for r in records)
    assert sorted(p.name for p in (run / ".hydra").iterdir() if p.is_file()) == HYDRA_FILES
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log"] + [
        f"train_rank{r}.log" for r in range(1, world_size)
    ]
    assert not (run / ".run.lock").exists()
    return info


def test_two_nodes_one_process_each_one_folder_a_resume_and_a_refusal(tmp_path: Path) -> None:
    """torchrun on each node, no run folder given: the folder is named after the launch (`torchrun-<id>`)."""
    assert finish(torchrun_nodes(tmp_path, 1, "job1", [])) == [0, 0]
    run = only_run(tmp_path / "outputs" / "pretrain" / "runs")
    assert run.name == "torchrun-job1"
    first = assert_one_record(run, 2, steps=4)

    assert finish(torchrun_nodes(tmp_path, 1, "job2", [f"resume={run}", "iterations=6"])) == [0, 0]
    assert only_run(tmp_path / "outputs" / "pretrain" / "runs") == run  # resumed in place
    resumed = assert_one_record(run, 2, steps=6)
    assert resumed["config_sha256"] != first["config_sha256"]  # iterations=6
    assert len(list((run / ".hydra").glob("resume-*/config.yaml"))) == 1

    refused = torchrun_nodes(tmp_path, 1, "job1", [])  # the finished launch again: no resume
    assert finish(refused) == [1, 1]
    assert refused[0].error_lines() == [
        f"error: {run} already holds a run (run_info.json); continue it with resume={run}, or start a new run "
        "in another hydra.run.dir"
    ]
    assert refused[1].error_lines() == ["error: rank 0 refused to start: " + refused[0].error_lines()[0][7:]]
    assert json.loads((run / "run_info.json").read_text()) == resumed  # untouched


def test_two_nodes_two_processes_each(tmp_path: Path) -> None:
    nodes = torchrun_nodes(tmp_path, 2, "job4", ["data.batch_size=4"])
    assert finish(nodes) == [0, 0]
    run = only_run(tmp_path / "outputs" / "pretrain" / "runs")
    assert_one_record(run, 4, steps=4)
    assert [r["world_size"] for r in ranks(run, 4)] == [4] * 4


def test_a_generic_launch_takes_rank_zeros_folder_and_refuses_on_every_node(tmp_path: Path) -> None:
    """MASTER_ADDR/NODE_RANK/LOCAL_RANK by hand: node 1's process is rank 1 (it used to act as rank 0), the
    ranks take rank 0's new folder, and a refusal on rank 0 ends node 1 too."""
    assert finish(generic_nodes(tmp_path, [], "run")) == [0, 0]
    run = only_run(tmp_path / "outputs" / "pretrain" / "runs")
    info = assert_one_record(run, 2, steps=4)

    refused = generic_nodes(tmp_path, [f"hydra.run.dir={run}"], "again")
    assert finish(refused) == [1, 1]
    assert refused[0].error_lines()[0].startswith(f"error: {run} already holds a run")
    assert (
        refused[1].error_lines()[0].startswith(f"error: rank 0 refused to start: {run} already holds a run")
    )
    assert json.loads((run / "run_info.json").read_text()) == info


def test_a_failure_on_one_rank_ends_the_other(tmp_path: Path) -> None:
    """Rank 1 alone fails mid-run: rank 0 stops too, naming rank 1 and its error, and records that."""
    fault = "+callbacks.fault={_target_:rank_faults.FailOnRank,rank:1,batch:2}"
    nodes = generic_nodes(tmp_path, [fault, f"hydra.run.dir={tmp_path / 'run'}"], "fault")
    assert finish(nodes) == [1, 1]
    cause = "injected failure on rank 1 at batch 2"
    assert f"RuntimeError: {cause}" in nodes[1].output()
    assert nodes[0].error_lines() == [f"error: stopped because rank 1 failed: {cause}"]
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["status"] == "failed" and cause in info["error"]
    assert not (tmp_path / "run" / ".run.lock").exists()


def test_rank_zero_failing_first_under_torchrun_records_the_failure(tmp_path: Path) -> None:
    """Rank 0 fails first and waits for rank 1 to read its abort; rank 1 ends, and torchrun's agent SIGTERMs
    rank 0 during that wait. The run is still recorded as failed with rank 0's error (it stayed `running`)."""
    run = tmp_path / "run"
    fault = "+callbacks.fault={_target_:rank_faults.FailOnRank,rank:0,batch:1}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "dgggan_pl.train", *TRAIN, *TIMEOUTS, "trainer=ddp_cpu", fault, f"hydra.run.dir={run}",
    ]  # fmt: skip
    node = start(command, node_env(), tmp_path, "torchrun")
    assert finish([node]) != [0]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed" and "injected failure on rank 0 at batch 1" in info["error"]
    assert not (run / ".run.lock").exists()


def test_a_child_rank_killed_without_a_word_ends_its_parent_which_records_it(tmp_path: Path) -> None:
    """`trainer=ddp_cpu` from one command: rank 0 starts rank 1 itself. Rank 1 is SIGKILLed while rank 0 is
    outside any collective: rank 0's watcher names it and records the run failed (Lightning's observer used to
    SIGKILL rank 0 as well, before it could: exit -9 and no line)."""
    run = tmp_path / "run"
    fault = "+callbacks.fault={_target_:rank_faults.KillOnRank,rank:1,batch:2,others_wait_s:60}"
    command = [sys.executable, "-m", "dgggan_pl.train", *TRAIN, *TIMEOUTS, "trainer=ddp_cpu", fault]
    node = start([*command, f"hydra.run.dir={run}"], node_env(), tmp_path, "parent")
    assert finish([node]) == [128 + signal.SIGKILL]
    line = node.error_lines()[-1]
    assert line.startswith("error: stopped because rank 1 (pid ") and line.endswith(
        " was killed by SIGKILL before it could tell the others why"
    )
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed" and "rank 1" in info["error"] and "SIGKILL" in info["error"]
    assert not (run / ".run.lock").exists()


def test_a_child_rank_that_dies_before_the_rendezvous_ends_its_parent_at_once(tmp_path: Path) -> None:
    """Rank 1 (started by rank 0) exits before it meets rank 0 (tests/early_exit/sitecustomize.py): rank 0
    leaves the rendezvous in seconds, not after `startup_timeout_s`, naming rank 1, and the new run folder and its
    lock are gone."""
    run = tmp_path / "run"
    env = node_env(DGGGAN_TEST_EXIT_LOCAL_RANK=1)
    env["PYTHONPATH"] = f"{TESTS_DIR / 'early_exit'}{os.pathsep}{env['PYTHONPATH']}"
    command = [
        sys.executable,
        "-m",
        "dgggan_pl.train",
        *TRAIN,
        *TIMEOUTS,
        "trainer=ddp_cpu",
        f"hydra.run.dir={run}",
    ]
    node = start(command, env, tmp_path, "parent")
    assert finish([node]) == [3]
    line = node.error_lines()[-1]
    assert line.startswith("error: stopped because rank 1 (pid ") and line.endswith(
        " exited with status 3 before it could tell the others why"
    )
    assert not run.exists()


def test_sigterm_ends_a_rank_blocked_in_a_collective(tmp_path: Path) -> None:
    """Rank 1 paused (SIGSTOP) leaves rank 0 waiting in its next all-reduce, where no Python signal handler
    runs; SIGTERM still ends it (143), and rank 1, resumed, stops too instead of waiting for the timeout."""
    long_run = ["iterations=100000", "trainer.val_check_interval=100000", "distributed.stop_grace_s=3"]
    nodes = generic_nodes(tmp_path, [*long_run, f"hydra.run.dir={tmp_path / 'run'}"], "stuck")
    deadline = time.monotonic() + RUN_BUDGET_S
    while not (tmp_path / "run" / "ranks" / "rank1.json").exists():  # both ranks are fitting
        assert time.monotonic() < deadline and all(node.popen.poll() is None for node in nodes)
        time.sleep(0.5)
    time.sleep(2)
    nodes[1].popen.send_signal(signal.SIGSTOP)
    time.sleep(3)  # rank 0 is now blocked, waiting for rank 1's gradients
    nodes[0].started = time.monotonic()
    nodes[0].popen.send_signal(signal.SIGTERM)
    assert nodes[0].wait(timeout=60) == 143
    nodes[1].started = time.monotonic()
    nodes[1].popen.send_signal(signal.SIGCONT)
    assert nodes[1].wait(timeout=60) != 0
    print(f"rank 0: 143 {nodes[0].seconds} s after SIGTERM; rank 1: {nodes[1].seconds} s after SIGCONT")
    assert nodes[0].output().splitlines()[-1] == (
        "train: stopped by SIGTERM; run_info.json says failed; no checkpoint was saved yet, so start it again"
    )
    assert nodes[1].error_lines()[-1].startswith("error: stopped because rank 0 ")
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["status"] == "failed" and "SIGTERM" in info["error"]
    assert not (tmp_path / "run" / ".run.lock").exists()


def _can_unshare_mounts() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "true"]).returncode == 0


def test_a_node_that_does_not_share_the_run_folder_stops_both(tmp_path: Path) -> None:
    """Node 1 sees an empty tmpfs where the run folder's parent is: one line on node 1 naming the folder,
    non-zero on both, and nothing left in the real folder."""
    if not _can_unshare_mounts():
        pytest.skip("needs `unshare -m` (root, or user namespaces) to give one node its own mounts")
    shared = tmp_path / "shared"
    shared.mkdir()
    overrides = ["distributed.shared_folder_wait_s=2", f"hydra.run.dir={shared / 'run'}"]
    port = free_port()
    own_mounts = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{shared}" && exec "$0" "$@"']
    nodes = [
        start(generic_command(overrides), generic_env(0, port), tmp_path, "node0"),
        start([*own_mounts, *generic_command(overrides)], generic_env(1, port), tmp_path, "node1"),
    ]
    assert finish(nodes) == [1, 1]
    line = (
        f"the run folder {shared / 'run'} must be shared by every rank: rank 1 (node 1, host {socket.gethostname()}) "
        "does not see rank 0's .run.lock in it; put the run folder on a filesystem that every node mounts at the "
        "same path"
    )
    assert nodes[1].error_lines() == [f"error: {line}"]
    assert nodes[0].error_lines() == [f"error: rank 1 refused to follow rank 0: {line}"]
    assert list(shared.iterdir()) == []  # the new run's folder is removed again
