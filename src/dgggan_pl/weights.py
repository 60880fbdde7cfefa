"""Loading and saving generator weights without trusting the file.

Two formats are read:
- Lightning `.ckpt` from training: `state_dict` keys `generator.*` (and `generator_ema.*` when EMA was on),
  the generator's `_target_` config under `hyper_parameters["model"]["generator"]`. Always read with
  `torch.load(weights_only=True)`: pickle can run arbitrary code, and the restricted unpickler refuses any
  global that is not a tensor or a plain container, before it is called.
- `.safetensors` (tensors only, no code by construction) plus a sidecar `<same stem>.json` holding the
  generator config, as written by `save_generator_safetensors` / `python -m dgggan_pl.export`, or a folder
  written by `DGGGANGenerator.save_pretrained` (`generator.safetensors` + `generator.json`).

The config is only ever instantiated when every `_target_` in it names a class defined in
`dgggan_pl.models`, so a crafted config cannot call e.g. `os.system` through Hydra either.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dgggan_pl.models.contract import SRGenerator
from dgggan_pl.utils.atomic import atomic_path

ALLOWED_TARGET_PREFIX = "dgggan_pl.models."
CKPT_SUFFIX = ".ckpt"
SAFETENSORS_SUFFIX = ".safetensors"
SHOWN_KEYS = 3  # keys quoted per kind in a mismatch message
SIDECAR_SUFFIX = ".json"
PRETRAINED_NAME = "generator.safetensors"  # the weights file of a `save_pretrained` folder
SIDECAR_FORMAT = "dgggan-pl-generator"
SIDECAR_VERSION = 1
GENERATOR_PREFIX = "generator."
EMA_PREFIX = "generator_ema."


class WeightsError(RuntimeError):
    """A weights file is missing, unsafe, malformed or does not match its config (the message names it)."""


def sidecar_path(weights_path: str | os.PathLike) -> Path:
    """The JSON config beside a `.safetensors` file: `model.safetensors` -> `model.json`."""
    return Path(weights_path).with_suffix(SIDECAR_SUFFIX)


def pretrained_path(path: str | os.PathLike) -> Path:
    """A `save_pretrained` folder -> its `generator.safetensors`; any other path unchanged."""
    path = Path(path)
    return path / PRETRAINED_NAME if path.is_dir() else path


def _iter_targets(node: Any) -> Iterator[Any]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _iter_targets(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _iter_targets(value)


def _locate_model_class(target: Any, source: Path) -> type:
    """Import `target` only if it is a `dgggan_pl.models.*` name, and return it if it is an nn.Module class."""
    refusal = (
        f"{source}: refusing generator config _target_ {target!r}: only nn.Module classes defined in "
        f"{ALLOWED_TARGET_PREFIX}* may be built from a weights file"
    )
    if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIX):
        raise WeightsError(refusal)
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise WeightsError(f"{refusal} ({type(error).__name__}: {error})") from error
    # The class itself must live in dgggan_pl.models: blocks `dgggan_pl.models.x.os.system`-style paths.
    if not (
        inspect.isclass(obj)
        and issubclass(obj, nn.Module)
        and obj.__module__.startswith(ALLOWED_TARGET_PREFIX)
    ):
        raise WeightsError(refusal)
    return obj


def check_generator_config(config: Any, source: str | os.PathLike) -> None:
    """Raise `WeightsError` unless `config` is a `_target_` mapping whose targets are all our model classes."""
    source = Path(source)
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise WeightsError(f"{source}: the generator config is not a `_target_` mapping: {config!r}")
    for target in _iter_targets(config):
        _locate_model_class(target, source)


def build_generator(config: Mapping[str, Any], source: str | os.PathLike) -> SRGenerator:
    """Instantiate the generator `_target_` config read from `source`, refusing targets outside our models."""
    source = Path(source)
    check_generator_config(config, source)
    try:
        generator = instantiate(copy.deepcopy(dict(config)))
    except Exception as error:  # Hydra wraps constructor errors in its own types; re-raise naming the file
        raise WeightsError(f"{source}: cannot build the generator from its config: {error}") from error
    if not isinstance(generator, nn.Module) or not hasattr(generator, "scale"):
        raise WeightsError(
            f"{source}: the config built {type(generator).__name__}, not a generator with `scale`"
        )
    return cast(SRGenerator, generator)


def _some(keys: list[str]) -> str:
    """The first few keys and how many more: a width mismatch otherwise prints every tensor name."""
    shown = keys[:SHOWN_KEYS]
    more = f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{shown}{more}" if keys else "none"


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """Load every tensor or fail, naming the file and summarising the missing/unexpected/mismatched keys."""
    expected = module.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        first = mismatched[0]
        raise WeightsError(
            f"{source}: weights do not fit the generator config: {len(mismatched)} of {len(expected)} tensors have "
            f"other shapes (e.g. {first}: {tuple(state[first].shape)} in the file, {tuple(expected[first].shape)} "
            f"in the config; all: {_some(mismatched)}). Check model.generator (channels, blocks) against the file."
        )
    result = module.load_state_dict(dict(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{source}: weights do not match the generator config; missing keys: {_some(result.missing_keys)}; "
            f"unexpected keys: {_some(result.unexpected_keys)}. Check that the file and its config belong together."
        )


def load_tensors_only(path: Path, map_location: Any, error: type[WeightsError], unreadable: str) -> Any:
    """`torch.load(weights_only=True)` with one-line errors: a pickle holding code is refused unrun."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as failure:
        reason = str(failure).splitlines()[0]
        raise error(
            f"{path}: refused to load: it pickles objects other than tensors and plain containers, which could "
            f"run code (read with torch.load(weights_only=True); {reason})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as failure:
        raise error(f"{unreadable} ({type(failure).__name__}: {failure or 'empty'})") from None


def _read_lightning_checkpoint(path: Path, use_ema: bool | None, map_location: Any) -> tuple[dict, dict]:
    """-> (generator state dict without prefix, generator config) from a Lightning checkpoint."""
    checkpoint = load_tensors_only(
        path, map_location, WeightsError, f"{path}: not a readable PyTorch checkpoint"
    )
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise WeightsError(f"{path}: not a Lightning checkpoint (no `state_dict` mapping)")
    state_dict = checkpoint["state_dict"]
    has_ema = any(key.startswith(EMA_PREFIX) for key in state_dict)
    if use_ema and not has_ema:
        raise WeightsError(
            f"{path}: no EMA weights ({EMA_PREFIX}*) in this checkpoint; train with EMA or use --no-ema"
        )
    prefix = EMA_PREFIX if (has_ema if use_ema is None else use_ema) else GENERATOR_PREFIX
    state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not state:
        raise WeightsError(f"{path}: no `{prefix}*` weights in the checkpoint's state_dict")
    try:
        config = checkpoint["hyper_parameters"]["model"]["generator"]
    except (KeyError, TypeError) as error:
        raise WeightsError(
            f'{path}: no generator config at hyper_parameters["model"]["generator"]; was it written by dgggan_pl training?'
        ) from error
    return state, dict(config)


def _read_safetensors(path: Path, use_ema: bool | None, map_location: Any) -> tuple[dict, dict]:
    """-> (generator state dict, generator config) from `.safetensors` + its sidecar JSON."""
    config_path = sidecar_path(path)
    if not config_path.is_file():
        raise WeightsError(
            f"{path}: its config {config_path} is missing; export both files with `python -m dgggan_pl.export`"
        )
    try:
        sidecar = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{config_path}: unreadable generator config JSON ({error})") from error
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT or "generator" not in sidecar:
        raise WeightsError(f"{config_path}: not a {SIDECAR_FORMAT} config (expected keys format, generator)")
    if use_ema is not None and bool(sidecar.get("ema")) != use_ema:
        held = "EMA" if sidecar.get("ema") else "raw (non-EMA)"
        raise WeightsError(f"{path}: holds the {held} generator; drop --ema/--no-ema or export the other one")
    device = str(map_location) if map_location is not None else "cpu"
    try:
        state = load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    return state, dict(sidecar["generator"])


def load_generator(
    path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
) -> tuple[SRGenerator, dict]:
    """Build the generator stored in `path` (`.ckpt`, `.safetensors` or a `save_pretrained` folder) in eval mode;
    return it and its config.

    `use_ema`: None takes the EMA weights when the file has them, True requires them, False takes the raw ones.
    Raises `WeightsError` naming the file for unsafe, malformed or mismatching files.
    """
    path = pretrained_path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    from dgggan_pl.peers import is_peer_file, load_peer  # imports this module

    if is_peer_file(path):  # a peer's released weights (.pth, or .safetensors without our JSON): spandrel
        return load_peer(path, map_location=map_location, use_ema=use_ema)
    suffix = path.suffix.lower()
    if suffix == CKPT_SUFFIX:
        state, config = _read_lightning_checkpoint(path, use_ema, map_location)
    elif suffix == SAFETENSORS_SUFFIX:
        state, config = _read_safetensors(path, use_ema, map_location)
    else:
        raise WeightsError(
            f"{path}: unknown weights format {path.suffix!r}; use a Lightning .ckpt or .safetensors"
        )
    generator = build_generator(config, path)
    module = cast(nn.Module, generator)  # build_generator checked it is one
    load_state_dict_strict(module, state, path)
    if map_location is not None:
        module.to(map_location)
    module.eval()
    return generator, config


def save_generator_safetensors(
    generator: SRGenerator, config: Mapping[str, Any], path: str | os.PathLike, *, ema: bool = False
) -> Path:
    """Write `generator`'s weights to `path` (.safetensors) and its config to the sidecar JSON, atomically.

    The JSON is written first, so a complete weights file always has its config beside it.
    Returns the sidecar path.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise WeightsError(f"{path}: safetensors output must end in {SAFETENSORS_SUFFIX}")
    if OmegaConf.is_config(config):
        config = cast(Mapping[str, Any], OmegaConf.to_container(config, resolve=True))
    check_generator_config(config, path)  # refuse now what load_generator would refuse later
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "ema": ema, "generator": dict(config)}
    config_path = sidecar_path(path)
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tensors = {
        key: value.detach().cpu().contiguous().clone() for key, value in generator.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": SIDECAR_FORMAT})
    return config_path
