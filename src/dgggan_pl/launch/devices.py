"""How many devices each sweep job gets, and which ones (see docs/sweeps.md#devices).

Pure functions of the job's trainer values, its overrides and the machine's GPU count, so that an 8-GPU
machine can be tested on a CPU-only one with a faked count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

GPU_ACCELERATORS = ("gpu", "cuda")


def override_key(override: str) -> str:
    """`++trainer.devices=2` -> `trainer.devices`; `trainer=ddp` -> `trainer`."""
    return override.split("=", 1)[0].lstrip("+~")


def visible_gpu_ids(env: Mapping[str, str], cuda_device_count: int) -> list[str]:
    """The GPUs this machine lets the sweep use, as CUDA_VISIBLE_DEVICES entries (ids or UUIDs)."""
    listed = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in env:
        return listed[:cuda_device_count]
    return [str(i) for i in range(cuda_device_count)]


def device_changes(
    overrides: Sequence[str],
    trainer: Mapping[str, Any],
    cuda_device_count: int,
    *,
    keys: Mapping[str, str],
    all_gpus: bool,
    gpus_per_job: int | None,
    ddp_strategy: str,
) -> dict[str, Any]:
    """The trainer values (`devices`, `strategy`) the launcher changes for one job, so that it uses the GPUs
    it should; `keys` maps those names (and `num_nodes`) to config keys, e.g. `devices` -> `trainer.devices`.

    `trainer` holds the job's composed `devices`, `accelerator`, `strategy`. With `gpus_per_job`, every job
    runs on that many GPUs (several jobs at once, see `gpu_slots`). Else, with `all_gpus`, a job whose
    trainer asks for one device on `auto`/`gpu` runs on every GPU of a multi-GPU machine, unless its
    overrides chose the layout (the trainer group, its devices, strategy or num_nodes). A widened job gets
    `ddp_strategy` when its trainer names none (plain `ddp` fails on the GAN's partly frozen networks).
    """
    typed = {override_key(o) for o in overrides}
    group = keys["devices"].rsplit(".", 1)[0]
    layout_keys = {group, keys["devices"], keys["strategy"], keys["num_nodes"]}
    strategy = {"strategy": ddp_strategy} if trainer.get("strategy") in (None, "auto") else {}
    gpu_trainer = trainer.get("accelerator") in (*GPU_ACCELERATORS, "auto")
    if gpus_per_job is not None:
        if keys["devices"] in typed:
            raise ValueError(
                f"{keys['devices']} is set from hydra.launcher.gpus_per_job; drop the {keys['devices']}=... override"
            )
        if not gpu_trainer:
            raise ValueError(
                f"hydra.launcher.gpus_per_job={gpus_per_job} needs a GPU trainer, not {keys['accelerator']}="
                f"{trainer.get('accelerator')}; use hydra.launcher.parallel_jobs for CPU jobs"
            )
        return {"devices": gpus_per_job, **(strategy if gpus_per_job > 1 else {})}
    widen = (
        all_gpus
        and cuda_device_count > 1
        and gpu_trainer
        and not typed & layout_keys
        and str(trainer.get("devices")) == "1"
    )
    return {"devices": cuda_device_count, **strategy} if widen else {}


def gpu_slots(
    gpus_per_job: int | None, parallel_jobs: int | None, gpu_ids: Sequence[str]
) -> list[dict[str, str]]:
    """One environment addition per job that may run at once: disjoint CUDA_VISIBLE_DEVICES per slot.

    Without `gpus_per_job` the jobs run `parallel_jobs` (default 1) at a time and see every device.
    """
    if parallel_jobs is not None and parallel_jobs < 1:
        raise ValueError(f"hydra.launcher.parallel_jobs={parallel_jobs}: must be a positive integer or null")
    if gpus_per_job is None:
        return [{} for _ in range(parallel_jobs or 1)]
    if gpus_per_job < 1:
        raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job}: must be a positive integer or null")
    available = len(gpu_ids) // gpus_per_job
    if available == 0:
        raise ValueError(
            f"hydra.launcher.gpus_per_job={gpus_per_job} but this machine shows {len(gpu_ids)} GPU(s); "
            "lower it or unset it (null: jobs one after another on every GPU)"
        )
    if parallel_jobs is not None and parallel_jobs > available:
        raise ValueError(
            f"hydra.launcher.parallel_jobs={parallel_jobs} jobs of {gpus_per_job} GPUs need "
            f"{parallel_jobs * gpus_per_job} GPUs, this machine shows {len(gpu_ids)}"
        )
    count = parallel_jobs or available
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids[i * gpus_per_job : (i + 1) * gpus_per_job])}
        for i in range(count)
    ]
