"""Whether a checkpoint can be resumed with this config, checked before the run folder is written to.

Lightning finds out only inside `Trainer.fit`, after the run record, the loggers and the resolved config of the
attempt exist, and says it in a traceback of 50 to 130 lines. `check_resume` reads the checkpoint first
(memory-mapped: its tensors stay on disk until Lightning loads them) and refuses in one line (`ResumeError`)
naming the file, the key and what to do:

- a checkpoint that cannot be loaded (truncated, damaged): the other checkpoints of its folder that load, and
  the overrides that continue from the newest of them;
- network weights whose shapes or names differ from the networks this config builds (a changed
  `model.generator.channels`, ...), or an EMA generator the checkpoint lacks;
- a checkpoint saved mid-epoch, resumed with another global batch, number of processes or epoch length: its
  training loader (`data.resumable_loader.ResumableLoader`) replays the rest of the epoch only in the same layout.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.runs import ResumeError
from dgggan_pl.weights import CKPT_SUFFIX, EMA_PREFIX, GENERATOR_PREFIX

EMA_NETWORK = EMA_PREFIX.rstrip(".")
GENERATOR = GENERATOR_PREFIX.rstrip(".")
LOADER_KEYS = ("batches", "batches_per_epoch", "batch_size", "num_replicas")
_NAMED = 3  # a message names at most this many differing config keys
# torch.load's errors on a damaged file: a cut zip (RuntimeError), a short read (EOFError), a refused pickle
LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError)


def check_resume(cfg: DictConfig, ckpt_path: str | os.PathLike | None, world_size: int | None = None) -> None:
    """Raise `ResumeError` (one line) when `ckpt_path` cannot be resumed with `cfg` (see the module docstring).

    `world_size`: the number of training processes when known before the Trainer exists (None: not compared).
    Nothing when `ckpt_path` is None (a new run).
    """
    if ckpt_path is None:
        return
    path = Path(ckpt_path)
    try:
        checkpoint = read_checkpoint(path)
    except LOAD_ERRORS as error:
        raise ResumeError(unreadable_message(cfg, path, error)) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ResumeError(
            f"ckpt_path={path}: not a Lightning training checkpoint (no state_dict); {_fresh(cfg)}"
        )
    problem = network_mismatch(cfg, state, checkpoint.get("hyper_parameters")) or loader_mismatch(
        cfg, _loader_state(checkpoint), world_size
    )
    if problem is not None:
        raise ResumeError(f"ckpt_path={path}: {problem}")


def read_checkpoint(path: Path) -> Any:
    """`torch.load(weights_only=True)`, memory-mapped: the header and the pickled structure are read, the
    tensors' data stays on disk (enough to see whether it loads and to compare shapes)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def intact_checkpoints(path: Path) -> list[Path]:
    """The other `.ckpt` files beside `path` that load, newest first."""
    others = sorted(
        (p for p in path.parent.glob(f"*{CKPT_SUFFIX}") if p.is_file() and p.name != path.name),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    intact = []
    for other in others:
        try:
            read_checkpoint(other)
        except LOAD_ERRORS:
            continue
        intact.append(other)
    return intact


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "empty"
    return f"{type(error).__name__}: {text.split('. ')[0].rstrip('.')}"


def _continue_with(cfg: DictConfig, checkpoint: Path) -> str:
    """The overrides that continue this attempt's run from `checkpoint` instead."""
    resume = cfg.get("resume")
    if resume is None:
        return f"ckpt_path={checkpoint}"
    return f"resume={OmegaConf.select(cfg, 'paths.output_dir', default=resume)} ckpt_path={checkpoint}"


def _fresh(cfg: DictConfig) -> str:
    return "start a new run (without resume=/ckpt_path=)" + (
        "" if cfg.get("resume") is None else ", or continue it from another checkpoint with ckpt_path=<file>"
    )


def unreadable_message(cfg: DictConfig, path: Path, error: BaseException) -> str:
    """A checkpoint that does not load: why, which checkpoints beside it do, and how to continue from one."""
    head = f"ckpt_path={path}: cannot be loaded ({_first_sentence(error)}): truncated or damaged"
    intact = intact_checkpoints(path)
    if not intact:
        return f"{head}; no other checkpoint in {path.parent} loads: {_fresh(cfg)}"
    names = ", ".join(p.name for p in intact)
    return f"{head}; intact beside it: {names}; continue from {intact[0].name} with {_continue_with(cfg, intact[0])}"


def _config_differences(saved: Any, current: Any) -> str:
    """`key: saved -> current` for the first keys of a network config that differ ('' when unknown)."""
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping):
        return ""
    keys = [k for k in dict.fromkeys([*saved, *current]) if saved.get(k) != current.get(k)]
    return ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in keys[:_NAMED])


def instantiate_on_meta(node: DictConfig) -> Any:
    """`instantiate(node)` on the meta device: a network's shapes and constructor checks without its memory."""
    with torch.device("meta"):
        return instantiate(node)


def _expected_state(node: DictConfig) -> dict[str, torch.Size] | None:
    """Parameter and buffer shapes of the network `node` configures, built on the meta device (no memory); None
    when the config builds no network (its own error is raised where the run builds it, as for a new run)."""
    try:
        network = instantiate_on_meta(node)
    except Exception:  # noqa: BLE001  (any constructor error: not this check's to report)
        return None
    return {key: value.shape for key, value in network.state_dict().items()}


def network_mismatch(cfg: DictConfig, state: Mapping[str, Any], hparams: Any) -> str | None:
    """What differs between the checkpoint's networks and those `cfg.model` builds (None when they fit)."""
    saved_model = hparams.get("model") if isinstance(hparams, Mapping) else None
    networks = sorted({key.split(".", 1)[0] for key in state})
    ema = cfg.get("optim") is not None and cfg.optim.get("ema_decay") is not None
    if ema and GENERATOR in networks and EMA_NETWORK not in networks:
        return (
            "holds no EMA generator (generator_ema.*) but optim.ema_decay is set; resume with optim.ema_decay=null, "
            "or start a new run"
        )
    if EMA_NETWORK in networks and not ema:
        return (
            "holds an EMA generator (generator_ema.*) but optim.ema_decay is null here; resume with the run's"
            " optim.ema_decay"
        )
    for network in networks:
        config_key = GENERATOR if network == EMA_NETWORK else network
        node = OmegaConf.select(cfg, f"model.{config_key}", default=None)
        if node is None and config_key in (cfg.get("model") or {}):
            return (
                f"holds {network}.* but model.{config_key} is null here; resume with the run's model settings"
            )
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        expected = _expected_state(node)
        if expected is None:
            continue
        saved = {
            key[len(network) + 1 :]: value for key, value in state.items() if key.startswith(f"{network}.")
        }
        problem = _first_difference(network, saved, expected)
        if problem is None:
            continue
        current = OmegaConf.to_container(node, resolve=True)
        saved_node = saved_model.get(config_key) if isinstance(saved_model, Mapping) else None
        changed = _config_differences(saved_node, current)
        differs = f" (model.{config_key} differs from the checkpoint's: {changed})" if changed else ""
        return (
            f"{problem}{differs}; resume with the run's own model settings (its config_resolved.yaml), or start "
            "a new run"
        )
    return None


def _first_difference(
    network: str, saved: Mapping[str, Any], expected: Mapping[str, torch.Size]
) -> str | None:
    for key, shape in expected.items():
        if key not in saved:
            return f"has no {network}.{key}, which this config builds"
        if tuple(saved[key].shape) != tuple(shape):
            return (
                f"holds {network}.{key} of shape {tuple(saved[key].shape)}, this config builds {tuple(shape)}"
            )
    extra = next((key for key in saved if key not in expected), None)
    return None if extra is None else f"holds {network}.{extra}, which this config does not build"


def _loader_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The training loader's saved position (`ResumableLoader.state_dict`), or None."""
    try:
        states = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    except (KeyError, TypeError):
        return None
    state = states[0] if isinstance(states, list) and states else None
    return state if isinstance(state, Mapping) and all(k in state for k in LOADER_KEYS) else None


def loader_mismatch(cfg: DictConfig, state: Mapping[str, Any] | None, world_size: int | None) -> str | None:
    """Why the rest of the checkpoint's epoch cannot be replayed with this config (None when it can or need not:
    a checkpoint at an epoch's end resumes with any layout)."""
    if state is None:
        return None
    batches, per_epoch = int(state["batches"]), int(state["batches_per_epoch"])
    if not 0 < batches < per_epoch:
        return None
    replicas, per_process = int(state["num_replicas"]), int(state["batch_size"])
    stopped = f"stopped mid-epoch (batch {batches} of {per_epoch}), and the rest of that epoch replays only"
    new_run = "or start a new run from its weights (model.init_from=<this checkpoint>)"
    global_batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    if global_batch is not None and int(global_batch) != replicas * per_process:
        return (
            f"{stopped} with its global batch of {replicas * per_process} (data.batch_size={global_batch} here); "
            f"resume with data.batch_size={replicas * per_process}, {new_run}"
        )
    if world_size is not None and world_size != replicas:
        return (
            f"{stopped} on {replicas} process(es) ({world_size} here); resume on {replicas} (trainer.devices x "
            f"trainer.num_nodes), {new_run}"
        )
    samples = OmegaConf.select(cfg, "data.samples_per_epoch", default=None)
    # As the sampler (DistributedSampler, drop_last) and the loader (drop_last) count an epoch's batches.
    if samples is not None and (int(samples) // replicas) // per_process != per_epoch:
        return (
            f"{stopped} in epochs of {per_epoch} batches (data.samples_per_epoch={samples} makes "
            f"{(int(samples) // replicas) // per_process} here); resume with the run's data.samples_per_epoch, "
            f"{new_run}"
        )
    return None
