"""Per-rank entry point under torchrun: run the Hydra app as `__main__` with rank-specific overrides.

Usage (built by `commands.job_command`, not typed by hand):
`python -m torch.distributed.run ... -m dgggan_pl.launch.rank_entry <module | script.py> <overrides...>`.
Rank 0 runs the app unchanged; other ranks get `hydra.output_subdir=null` (only rank 0 writes `.hydra/`)
and their own `hydra.job.name`, so each rank logs to its own `<name>_rank<r>.log` in the shared job folder.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def app_job_name(app: str) -> str:
    """Hydra's default job name for an app: the script's or the module's last name (`train`)."""
    return Path(app).stem if app.endswith(".py") else app.rsplit(".", 1)[-1]


def rank_overrides(job_name: str, rank: int) -> list[str]:
    """Overrides that keep rank `rank` (> 0) from writing the job's `.hydra/` and `<job_name>.log` files."""
    if rank == 0:
        return []
    return ["hydra.output_subdir=null", f"hydra.job.name={job_name}_rank{rank}"]


def main(argv: list[str]) -> None:
    """Run `argv[0]` (module or script) as `__main__` with `argv[1:]` plus this rank's overrides."""
    if not argv:
        raise SystemExit("usage: python -m dgggan_pl.launch.rank_entry <module | script.py> [overrides...]")
    if "RANK" not in os.environ:
        raise SystemExit("dgggan_pl.launch.rank_entry must run under torch.distributed.run (RANK is not set)")
    app, overrides = argv[0], argv[1:]
    extra = rank_overrides(app_job_name(app), int(os.environ["RANK"]))
    if app.endswith(".py"):
        sys.argv = [app, *overrides, *extra]
        runpy.run_path(app, run_name="__main__")
    else:
        sys.argv = [app, *overrides, *extra]
        runpy.run_module(app, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
