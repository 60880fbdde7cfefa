"""Command lines and environments for one sweep job, each started as a fresh process (see docs/sweeps.md)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

RANK_ENTRY_MODULE = "dgggan_pl.launch.rank_entry"

# Variables through which a parent process (an earlier DDP job, torchrun, a SLURM allocation) would leak its
# process-group layout into a job. A job must see none of them: torchrun sets the ones it needs afresh, and
# Lightning must detect torchelastic (not SLURM, not "processes created externally" via a stale LOCAL_RANK).
LEAKY_ENV_NAMES = frozenset(
    {
        "LOCAL_RANK",
        "RANK",
        "GROUP_RANK",
        "ROLE_RANK",
        "NODE_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "ROLE_WORLD_SIZE",
        "ROLE_NAME",
        "MASTER_ADDR",
        "MASTER_PORT",
        "JSM_NAMESPACE_RANK",
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
    }
)
LEAKY_ENV_PREFIXES = ("TORCHELASTIC_", "SLURM_", "LSB_", "OMPI_", "PMI_")
_ABSENT = object()
# Hydra overrides of the sweep that must not reach a job started in RUN mode: the sweep's own mode, folder,
# launcher and sweeper, and what the launcher sets per job (its run dir, number and id).
SWEEP_ONLY_HYDRA_KEYS = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.run",
    "hydra/launcher",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra.sweeper",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.runtime",
    "hydra.overrides",
)
# lightning.Trainer's own defaults, for trainer configs that leave these keys out.
TRAINER_DEFAULTS = {"devices": "auto", "num_nodes": 1, "accelerator": "auto", "strategy": "auto"}


@dataclass(frozen=True)
class AppTarget:
    """How the Hydra app was started: `python -m <module>` or `python <script>`."""

    module: str | None = None
    script: Path | None = None

    def __post_init__(self) -> None:
        if (self.module is None) == (self.script is None):
            raise ValueError("AppTarget needs exactly one of module or script")

    def argv(self) -> list[str]:
        """Arguments after the interpreter that start the app (`-m mod` or `/abs/script.py`)."""
        return ["-m", self.module] if self.module is not None else [str(self.script)]

    def entry_arg(self) -> str:
        """The app as one argument for `rank_entry` (a module name or a `.py` path)."""
        return self.module if self.module is not None else str(self.script)


def current_app() -> AppTarget:
    """The app this process runs, read from `__main__` the way Lightning's own launcher reads it."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return AppTarget(module=spec.name)
    main_file = getattr(main, "__file__", None)
    if main_file is None:
        raise RuntimeError(
            "hydra/launcher=ddp cannot tell how to restart this app: __main__ has neither __spec__ nor "
            "__file__ (interactive session?). Start the sweep with `python -m <module> -m ...`."
        )
    return AppTarget(script=Path(main_file).resolve())


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without any distributed-launch variable (see `LEAKY_ENV_NAMES`)."""
    return {
        key: value
        for key, value in env.items()
        if key not in LEAKY_ENV_NAMES and not key.startswith(LEAKY_ENV_PREFIXES)
    }


def forwarded_hydra_overrides(hydra_overrides: Sequence[str]) -> list[str]:
    """The sweep's command-line Hydra overrides that each job must get too (`+hydra.job.env_set.X=1`,
    `hydra/job_logging=disabled`, `hydra.verbose=...`, `hydra.job.chdir=...`, `hydra.callbacks...`), as typed.

    Without them a job's `.hydra/hydra.yaml` would differ from the sweep's `multirun.yaml`.
    """
    kept = []
    for override in hydra_overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in SWEEP_ONLY_HYDRA_KEYS):
            kept.append(override)
    return kept


def quote_override_value(value: str) -> str:
    """Single-quote `value` for Hydra's override grammar, so `=`, `,` and spaces in paths stay literal.

    Inside Hydra quotes a backslash is literal unless it precedes a quote: escape the quote and double
    the backslashes in front of it (and in front of the closing quote).
    """
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def process_count(devices: Any, accelerator: Any, strategy: Any, cuda_device_count: int) -> int:
    """How many processes torchrun must start for one job: `trainer.devices` resolved as Lightning does.

    "auto" is one process on CPU and every visible GPU otherwise; -1 means every GPU. A spawn strategy
    (`ddp_spawn*`) starts its own workers from one process, so it gets one.
    """
    if isinstance(strategy, str) and "spawn" in strategy:
        return 1
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    uses_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_device_count > 0)
    if devices == "auto" and not uses_gpu and accelerator in ("cpu", "auto"):
        return 1
    if devices in ("auto", -1) and uses_gpu and cuda_device_count > 0:
        return cuda_device_count
    raise ValueError(
        f"trainer.devices={devices!r} names no number of processes per node here (trainer.accelerator="
        f"{accelerator!r}, {cuda_device_count} CUDA devices visible): set trainer.devices to a positive integer "
        "or a list of device ids (without a GPU: trainer=ddp_cpu)"
    )


def job_command(
    app: AppTarget,
    overrides: Sequence[str],
    output_dir: Path,
    job_num: int,
    nproc: int,
    python: str = sys.executable,
) -> list[str]:
    """The argv of one sweep job: the app in Hydra RUN mode writing into the job's sweep subfolder.

    One process runs the app directly; several run it under `torch.distributed.run --standalone` (a fresh
    rendezvous on a free port per job) through `rank_entry`, which keeps ranks > 0 from writing `.hydra/`.
    """
    run_overrides = [
        *overrides,
        f"hydra.run.dir={quote_override_value(str(output_dir))}",
        f"hydra.job.num={job_num}",
    ]
    if nproc == 1:
        return [python, *app.argv(), *run_overrides]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        RANK_ENTRY_MODULE,
        app.entry_arg(),
        *run_overrides,
    ]


def select_trainer_value(cfg: DictConfig, key: str, lightning_default: Any) -> Any:
    """`cfg[key]` (dotted, resolved); absent keys take the `lightning.Trainer` default they would get."""
    value = OmegaConf.select(cfg, key, throw_on_missing=True, default=lightning_default)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def with_wandb_group(
    overrides: Sequence[str], cfg: DictConfig, group_key: str | None, group: str | None
) -> list[str]:
    """`overrides` plus `<group_key>=<group>` when the job's config has that key and no override sets it."""
    result = list(overrides)
    if not group_key or not group or OmegaConf.select(cfg, group_key, default=_ABSENT) is _ABSENT:
        return result
    if any(o.split("=", 1)[0].lstrip("+~") == group_key for o in overrides):
        return result
    return [*result, f"{group_key}={quote_override_value(group)}"]
