"""Which rank this process is, read before anything is written, from the environment Lightning will use.

Lightning picks its `ClusterEnvironment` when the Trainer is built: torchelastic (`torchrun`), then SLURM, LSF,
MPI, else its own `LightningEnvironment` (`MASTER_ADDR MASTER_PORT NODE_RANK LOCAL_RANK` set by hand, or
Lightning starting the other processes of this node itself). `rank_layout` asks the same classes in the same
order, so the run folder, its lock and its records are decided by the process Lightning will call rank 0, not
by whichever process happens to see `LOCAL_RANK=0` (node 1 of a hand-made launch, say).

`launch_folder_name` names a run folder after the launch when the launcher gives it an id that every rank
sees and that a requeued or restarted attempt keeps (`slurm-<job>`, `torchrun-<rdzv id>`).
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.strategies import StrategyRegistry

from dgggan_pl.config import ConfigError

# Lightning's own order (`_AcceleratorConnector._choose_and_init_cluster_environment`): torchelastic first, since
# `torchrun` can run inside a SLURM job.
DETECTED_ENVIRONMENTS: tuple[type[ClusterEnvironment], ...] = (
    TorchElasticEnvironment,
    SLURMEnvironment,
    LSFEnvironment,
    MPIEnvironment,
)
SOURCES = {
    TorchElasticEnvironment: "torchelastic",
    SLURMEnvironment: "slurm",
    LSFEnvironment: "lsf",
    MPIEnvironment: "mpi",
}
GENERIC = "env"  # LightningEnvironment with LOCAL_RANK set: every process was started by hand or a script
# LightningEnvironment without LOCAL_RANK: this process starts the other processes of its node
LIGHTNING_LAUNCHER = "lightning"
SINGLE = "single"
TORCHRUN_NO_ID = "none"  # torchrun's default --rdzv-id: not an id of this launch
_UNSAFE_NAME = re.compile(r"[^\w.-]")
# Strategies whose worker processes are forked or spawned inside `Trainer.fit` and never run `train()` themselves.
_IN_PROCESS_START_METHODS = ("spawn", "fork", "forkserver")
NUM_NODES_KEY, DEVICES_KEY = "trainer.num_nodes", "trainer.devices"


@dataclass(frozen=True)
class RankLayout:
    """This process's place in its launch, as Lightning will compute it once the Trainer exists."""

    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int
    source: str  # torchelastic | slurm | lsf | mpi | env | lightning | single

    @property
    def is_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def starts_node_processes(self) -> bool:
        """Lightning's own launcher: this process re-runs the command for the other ranks of its node."""
        return self.source == LIGHTNING_LAUNCHER and self.distributed


def cluster_environment() -> ClusterEnvironment:
    """The environment Lightning's Trainer will pick (`SLURMEnvironment` may raise on a layout it refuses).

    Quietly: Lightning's SLURM detection warns when `srun` exists but did not start this process, which the
    Trainer says itself where it applies (this runs before anything else, in every process of a launch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PossibleUserWarning)
        for environment in DETECTED_ENVIRONMENTS:
            if environment.detect():
                return environment()
    return LightningEnvironment()


def starts_in_process(strategy: Any) -> bool:
    """Whether a strategy forks or spawns its workers inside `fit` (`ddp_spawn`, `ddp_fork`, `ddp_notebook`):
    those workers never run `train()`, so the run is decided by this one process."""
    if isinstance(strategy, Mapping):
        return str(strategy.get("start_method", "popen")) in _IN_PROCESS_START_METHODS
    if isinstance(strategy, str) and strategy in StrategyRegistry:
        method = StrategyRegistry[strategy]["init_params"].get("start_method", "popen")
        return str(method) in _IN_PROCESS_START_METHODS
    return False


def rank_layout(num_nodes: int = 1, devices_per_node: int = 1, in_process: bool = False) -> RankLayout:
    """This process's rank, local rank, node rank and world size, and the environment they came from.

    `num_nodes` and `devices_per_node` are the Trainer's; the scheduler's own numbers win where it sets them
    (torchrun, SLURM, LSF, MPI), and `check_layout` refuses a Trainer that disagrees with them. `in_process`: the
    strategy starts its workers inside `fit` (`starts_in_process`), so this process is the launch's only one.
    """
    if in_process:
        return RankLayout(0, 0, 0, 1, SINGLE)
    environment = cluster_environment()
    if not isinstance(environment, LightningEnvironment):
        return RankLayout(
            global_rank=environment.global_rank(),
            local_rank=environment.local_rank(),
            node_rank=environment.node_rank(),
            world_size=environment.world_size(),
            source=SOURCES[type(environment)],
        )
    world_size = num_nodes * devices_per_node
    if world_size == 1:
        return RankLayout(0, 0, 0, 1, SINGLE)
    # DDPStrategy.set_world_ranks: node_rank * processes per node + local_rank
    local, node = environment.local_rank(), environment.node_rank()
    source = GENERIC if environment.creates_processes_externally else LIGHTNING_LAUNCHER
    return RankLayout(node * devices_per_node + local, local, node, world_size, source)


def check_layout(layout: RankLayout, num_nodes: int, devices_per_node: int) -> None:
    """Refuse, in one line on every rank, a Trainer layout that the launcher's processes do not match (a hang
    at the rendezvous otherwise, or Lightning's multi-line error after the run folder was written)."""
    if layout.source == SINGLE:
        return
    if layout.source in (GENERIC, LIGHTNING_LAUNCHER):
        problems = []
        declared = os.environ.get("WORLD_SIZE")
        if declared is not None and declared.strip() != str(layout.world_size):
            problems.append(
                f"WORLD_SIZE={declared} but {num_nodes} x {devices_per_node} = {layout.world_size}"
            )
        if layout.local_rank >= devices_per_node:
            problems.append(f"LOCAL_RANK={layout.local_rank} but {devices_per_node} process(es) per node")
        if layout.node_rank >= num_nodes:
            problems.append(f"NODE_RANK={layout.node_rank} but {num_nodes} node(s)")
        if problems:
            raise ConfigError(
                f"{NUM_NODES_KEY}={num_nodes} {DEVICES_KEY}={devices_per_node} do not match this launch ("
                + "; ".join(problems)
                + f"): set {NUM_NODES_KEY} to the number of nodes and {DEVICES_KEY} to the processes per node"
            )
        return
    try:
        cluster_environment().validate_settings(num_devices=devices_per_node, num_nodes=num_nodes)
    except (ValueError, RuntimeError) as error:  # Lightning's message names the setting and the fix
        raise ConfigError(f"{NUM_NODES_KEY}/{DEVICES_KEY}: {error}") from None


def launch_id(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(`slurm` | `torchrun`, id) of this launch when its launcher names it the same on every rank and keeps
    the name when it starts the job again: SLURM's job id (`<array job>_<task>` in an array, none in an
    interactive allocation, as Lightning's `SLURMEnvironment.job_id`), else torchrun's rendezvous id."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        return "slurm", f"{array_job}_{task}" if array_job and task else env["SLURM_JOB_ID"]
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != TORCHRUN_NO_ID:
        return "torchrun", run_id
    return None


def launch_folder_name(env: Mapping[str, str] | None = None) -> str | None:
    """`slurm-<job id>` / `torchrun-<rdzv id>` (see `launch_id`), or None when the launch has no such id."""
    found = launch_id(env)
    if found is None:
        return None
    kind, ident = found
    return f"{kind}-{_UNSAFE_NAME.sub('_', ident)}"


_RESTART_COUNTS = {"slurm": "SLURM_RESTART_COUNT", "torchrun": "TORCHELASTIC_RESTART_COUNT"}


def restart_count(env: Mapping[str, str] | None = None) -> int:
    """How many times the launcher has started this launch again (SLURM requeue, torchrun --max-restarts)."""
    env = os.environ if env is None else env
    found = launch_id(env)
    if found is None:
        return 0
    value = env.get(_RESTART_COUNTS[found[0]], "0")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class TrainerLayout:
    """The rank layout a Trainer config asks for: nodes, processes per node, and who starts the workers."""

    num_nodes: int
    devices_per_node: int
    in_process: bool  # the strategy forks/spawns its workers inside `fit` (see `starts_in_process`)

    def layout(self) -> RankLayout:
        return rank_layout(self.num_nodes, self.devices_per_node, self.in_process)


def trainer_layout(cfg: Any) -> TrainerLayout:
    """`trainer.num_nodes`, `trainer.devices` (as a process count) and `trainer.strategy` of a run config."""
    import torch

    from dgggan_pl.launch.commands import TRAINER_DEFAULTS, process_count, select_trainer_value

    def value(name: str) -> Any:
        return select_trainer_value(cfg, f"trainer.{name}", TRAINER_DEFAULTS[name])

    try:
        num_nodes = int(value("num_nodes"))
    except (TypeError, ValueError):
        raise ConfigError(f"{NUM_NODES_KEY}={value('num_nodes')!r}: must be a positive integer") from None
    try:
        per_node = process_count(value("devices"), value("accelerator"), "auto", torch.cuda.device_count())
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if num_nodes < 1:
        raise ConfigError(f"{NUM_NODES_KEY}={num_nodes}: must be a positive integer")
    return TrainerLayout(num_nodes, per_node, starts_in_process(value("strategy")))


def adopt_rank(layout: RankLayout) -> None:
    """Make Lightning's `rank_zero_only` use this rank from now on: at import it guessed one from `RANK`,
    `LOCAL_RANK` or `SLURM_PROCID`, which is 0 on every node of a launch that sets only `LOCAL_RANK`
    (Lightning's strategy sets it the same way later, in `DDPStrategy.set_world_ranks`)."""
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero

    fabric_rank_zero.rank_zero_only.rank = layout.global_rank  # type: ignore[attr-defined]
    pytorch_rank_zero.rank_zero_only.rank = layout.global_rank  # type: ignore[attr-defined]
    if layout.source in (GENERIC, LIGHTNING_LAUNCHER):
        os.environ["RANK"] = str(layout.global_rank)  # as torchrun sets it: Lightning's log prefixes read it


_node_children: list[subprocess.Popen] = []  # the processes `start_node_processes` started on this node


def start_node_processes(shape: TrainerLayout) -> RankLayout:
    """Run Lightning's own launcher now instead of inside `fit`: it starts this node's other processes (the
    same command, with `LOCAL_RANK` and Hydra's `hydra.run.dir` of this process), and sets this process's
    `LOCAL_RANK=0`, so that every rank takes part in the start-up agreement and the Trainer later finds the
    processes started. Returns this process's layout from then on.

    Lightning's launcher also starts a thread that SIGKILLs this process within 5 s of a child's non-zero exit,
    often before this rank has recorded the run as failed (`run_info.json` left `running`). It is not started
    here: `watch.RankWatch` watches the children (`node_children`) and ends this rank through its exit hook,
    which records the failure, when one ends without publishing why."""
    from lightning.fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    from lightning.fabric.utilities.distributed import _set_num_threads_if_needed

    launcher = _SubprocessScriptLauncher(LightningEnvironment(), shape.devices_per_node, shape.num_nodes)
    launcher.cluster_environment.validate_settings(
        num_devices=shape.devices_per_node, num_nodes=shape.num_nodes
    )
    if not launcher.cluster_environment.creates_processes_externally:
        launcher._call_children_scripts()  # what `launcher.launch` does, less `_launch_process_observer`
        _node_children[:] = launcher.procs
    _set_num_threads_if_needed(num_processes=shape.devices_per_node)
    return shape.layout()


def node_children() -> list[subprocess.Popen]:
    """The other processes of this node that this process started (empty unless `start_node_processes` ran)."""
    return list(_node_children)


def process_group_backend(cfg: Any) -> str:
    """The backend Lightning's DDP strategy would choose: `trainer.strategy.process_group_backend` when the
    strategy config names one, else the device's default (gloo on CPU, NCCL on CUDA)."""
    import torch
    from lightning.fabric.utilities.distributed import _get_default_process_group_backend_for_device

    from dgggan_pl.launch.commands import TRAINER_DEFAULTS, select_trainer_value

    strategy = select_trainer_value(cfg, "trainer.strategy", TRAINER_DEFAULTS["strategy"])
    if isinstance(strategy, Mapping) and strategy.get("process_group_backend"):
        return str(strategy["process_group_backend"])
    accelerator = select_trainer_value(cfg, "trainer.accelerator", TRAINER_DEFAULTS["accelerator"])
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return _get_default_process_group_backend_for_device(torch.device("cuda" if gpu else "cpu"))
