"""A sweep job's config and output folder, composed in the sweep process (before the job starts).

Both launchers need the folder up front: `hydra/launcher=ddp` passes it as the job's `hydra.run.dir`, and
`hydra/launcher=slurm` records it in the sweep summary at submission time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def job_config(
    hydra_context: HydraContext, sweep_cfg: DictConfig, overrides: Sequence[str], num: int
) -> DictConfig:
    """The job's full config with `hydra.runtime.output_dir` = `<sweep.dir>/<sweep.subdir>` (absolute)."""
    config = hydra_context.config_loader.load_sweep_config(sweep_cfg, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"job_id_for_{num}"
        config.hydra.job.num = num
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)  # `${hydra:...}` in sweep.subdir needs it
    try:
        subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))
        output_dir = Path(str(config.hydra.sweep.dir), subdir).absolute()
    finally:
        HydraConfig.instance().cfg = saved
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir)
    return config
