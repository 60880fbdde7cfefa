"""Loading and saving our generators' weights without trusting the file.

Two formats are read:
- Lightning `.ckpt` from training: `state_dict` keys `generator.*` (and `generator_ema.*` when EMA was on),
  the generator's `_target_` config under `hyper_parameters["model"]["generator"]`. Always read with
  `torch.load(weights_only=True)`: pickle can run arbitrary code, and the restricted unpickler refuses any
  global that is not a tensor or a plain container, before it is called.
- `.safetensors` (tensors only, no code by construction) plus a sidecar `<same stem>.json` holding the
  generator config, as written by `save_generator_safetensors` / `python -m dgggan_pl.export`, or a folder
  written by `SRModel.save_pretrained` (`generator.safetensors` + `generator.json`). The file also carries the
  same JSON as one uint8 tensor (`CONFIG_TENSOR`), so that loaders that only see tensors (spandrel, hence
  chaiNNer and ComfyUI: `dgggan_pl.spandrel_support`) can rebuild the generator; the sidecar wins when present.

The config is only ever instantiated when every `_target_` in it names a class defined in `dgggan_pl.models`,
so a crafted config cannot call e.g. `os.system`; it is built here (`build_generator`), not by Hydra, so that
inference imports neither Hydra nor OmegaConf. Every tensor must be finite: NaN/Inf weights are refused at load,
naming the file and the tensor, instead of writing black images or NaN table rows. Peers' released weights are
read by `dgggan_pl.peers`; `dgggan_pl.sr_model` picks the reader.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dgggan_pl.models.contract import SRGenerator
from dgggan_pl.utils.atomic import atomic_path, unwritable_reason

ALLOWED_TARGET_PREFIX = "dgggan_pl.models."
CKPT_SUFFIX = ".ckpt"
SAFETENSORS_SUFFIX = ".safetensors"
SHOWN_KEYS = 3  # keys quoted per kind in a mismatch message
SIDECAR_SUFFIX = ".json"
PRETRAINED_NAME = "generator.safetensors"  # the weights file of a `save_pretrained` folder
SIDECAR_FORMAT = "dgggan-pl-generator"
SIDECAR_VERSION = 1  # the sidecar layout this code writes and reads; any other is refused
CONFIG_TENSOR = "dgggan_pl_config"  # the sidecar's JSON as UTF-8 bytes, inside the .safetensors file
GENERATOR_PREFIX = "generator."
EMA_PREFIX = "generator_ema."


class WeightsError(RuntimeError):
    """A weights file is missing, unsafe, malformed or does not match its config (the message names it)."""


class UnwritableFolder(WeightsError):
    """Weights cannot be written to `folder` (read-only, missing parent, disk full): one line naming it."""

    def __init__(self, folder: Path, reason: str) -> None:
        self.folder, self.reason = folder, reason
        super().__init__(f"cannot write to {folder} ({reason}); choose a writable folder")


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


def _instantiate(node: Any, source: Path) -> Any:
    """Build every `_target_` mapping in `node` with its other keys as keyword arguments (Hydra's meaning)."""
    if isinstance(node, Mapping):
        built = {key: _instantiate(value, source) for key, value in node.items() if key != "_target_"}
        return _locate_model_class(node["_target_"], source)(**built) if "_target_" in node else built
    if isinstance(node, list | tuple):
        return [_instantiate(value, source) for value in node]
    return node


def build_generator(config: Mapping[str, Any], source: str | os.PathLike) -> SRGenerator:
    """Instantiate the generator `_target_` config read from `source`, refusing targets outside our models."""
    source = Path(source)
    check_generator_config(config, source)
    try:
        generator = _instantiate(config, source)
    except WeightsError:
        raise
    except Exception as error:  # a constructor refusing its arguments: re-raise naming the file
        raise WeightsError(f"{source}: cannot build the generator from its config: {error}") from error
    if not isinstance(generator, nn.Module):
        raise WeightsError(f"{source}: the config built {type(generator).__name__}, not a generator module")
    return cast(SRGenerator, generator)


def _some(keys: list[str]) -> str:
    """The first few keys and how many more: a width mismatch otherwise prints every tensor name."""
    shown = keys[:SHOWN_KEYS]
    more = f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{shown}{more}" if keys else "none"


def check_finite(state: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse weights holding NaN or Inf, naming the file, the first such tensor and how many there are."""
    bad = [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        first = state[bad[0]]
        count = int((~torch.isfinite(first)).sum())
        raise WeightsError(
            f"{source}: tensor {bad[0]} holds NaN/Inf ({count} of {first.numel()} values; {len(bad)} tensor(s) "
            f"in all: {_some(bad)}); the weights are unusable, use an earlier checkpoint"
        )


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


def _read_lightning_checkpoint(
    path: Path, use_ema: bool | None, map_location: Any
) -> tuple[dict, dict, bool]:
    """-> (generator state dict without prefix, generator config, EMA?) from a Lightning checkpoint."""
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
    ema = has_ema if use_ema is None else use_ema
    prefix = EMA_PREFIX if ema else GENERATOR_PREFIX
    state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not state:
        raise WeightsError(f"{path}: no `{prefix}*` weights in the checkpoint's state_dict")
    try:
        config = checkpoint["hyper_parameters"]["model"]["generator"]
    except (KeyError, TypeError) as error:
        raise WeightsError(
            f'{path}: no generator config at hyper_parameters["model"]["generator"]; was it written by dgggan_pl training?'
        ) from error
    return state, dict(config), ema


def check_sidecar(sidecar: Any, source: str | os.PathLike) -> dict[str, Any]:
    """The sidecar mapping if it is ours and of `SIDECAR_VERSION`; else a one-line `WeightsError` naming `source`."""
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT or "generator" not in sidecar:
        raise WeightsError(f"{source}: not a {SIDECAR_FORMAT} config (expected keys format, generator)")
    version = sidecar.get("version")
    if version != SIDECAR_VERSION:
        raise WeightsError(
            f"{source}: {SIDECAR_FORMAT} config version {version!r}, but this dgggan-pl reads version "
            f"{SIDECAR_VERSION} only; use the dgggan-pl release that wrote it, or export the weights again"
        )
    return sidecar


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The JSON config of a `.safetensors` file: its sidecar if present, else the copy inside it, else None."""
    config_path = sidecar_path(path)
    if config_path.is_file():
        try:
            return check_sidecar(json.loads(config_path.read_text(encoding="utf-8")), config_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WeightsError(f"{config_path}: unreadable generator config JSON ({error})") from error
    try:
        with safe_open(path, framework="pt") as handle:
            if CONFIG_TENSOR not in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
                return None
            embedded = handle.get_tensor(CONFIG_TENSOR)
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    return config_from_tensor(embedded, path)


def has_our_config(path: str | os.PathLike) -> bool:
    """True for a `.safetensors` file written by us: a sidecar beside it or our config inside it."""
    path = Path(path)
    if sidecar_path(path).is_file():
        return True
    try:
        with safe_open(path, framework="pt") as handle:
            return CONFIG_TENSOR in handle.keys()  # noqa: SIM118 - safe_open has no __contains__
    except (SafetensorError, OSError):
        return False


def config_tensor(sidecar: Mapping[str, Any]) -> torch.Tensor:
    """The sidecar JSON as a uint8 tensor (stored beside the weights inside the `.safetensors` file)."""
    data = json.dumps(sidecar, sort_keys=True).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def config_from_tensor(tensor: torch.Tensor, source: str | os.PathLike) -> dict[str, Any]:
    """The sidecar mapping stored by `config_tensor`, checked like a sidecar file."""
    try:
        sidecar = json.loads(bytes(tensor.to(torch.uint8).cpu().numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{source}: unreadable {CONFIG_TENSOR} tensor ({error})") from error
    return check_sidecar(sidecar, f"{source} ({CONFIG_TENSOR})")


def _read_safetensors(path: Path, use_ema: bool | None, map_location: Any) -> tuple[dict, dict, bool]:
    """-> (generator state dict, generator config, EMA?) from `.safetensors` and its config."""
    sidecar = _read_sidecar(path)
    if sidecar is None:
        raise WeightsError(
            f"{path}: its config {sidecar_path(path)} is missing; export both files with `python -m dgggan_pl.export`"
        )
    if use_ema is not None and bool(sidecar.get("ema")) != use_ema:
        held = "EMA" if sidecar.get("ema") else "raw (non-EMA)"
        raise WeightsError(f"{path}: holds the {held} generator; drop --ema/--no-ema or export the other one")
    device = str(map_location) if map_location is not None else "cpu"
    try:
        state = load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    state.pop(CONFIG_TENSOR, None)
    return state, dict(sidecar["generator"]), bool(sidecar.get("ema"))


class StoredGenerator(NamedTuple):
    """A generator loaded from one of our files: the network (eval mode), its config and whether the weights are
    the EMA ones."""

    generator: SRGenerator
    config: dict[str, Any]
    ema: bool


def _read_generator(path: Path, use_ema: bool | None, map_location: Any) -> tuple[dict, dict, bool]:
    """`(state dict, generator config, EMA?)` of our `.ckpt` or `.safetensors`, every tensor finite."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == CKPT_SUFFIX:
        state, config, ema = _read_lightning_checkpoint(path, use_ema, map_location)
    elif suffix == SAFETENSORS_SUFFIX:
        state, config, ema = _read_safetensors(path, use_ema, map_location)
    else:
        raise WeightsError(
            f"{path}: unknown weights format {path.suffix!r}; use a Lightning .ckpt or .safetensors"
        )
    check_finite(state, path)
    return state, config, ema


def load_stored(
    path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
) -> StoredGenerator:
    """Build our generator stored in `path` (`.ckpt`, `.safetensors` or a `save_pretrained` folder) in eval mode.

    `use_ema`: None takes the EMA weights when the file has them, True requires them, False takes the raw ones.
    Raises `WeightsError` naming the file for unsafe, malformed, non-finite or mismatching files.
    """
    path = pretrained_path(path)
    state, config, ema = _read_generator(path, use_ema, map_location)
    generator = build_generator(config, path)
    module = cast(nn.Module, generator)  # build_generator checked it is one
    load_state_dict_strict(module, state, path)
    if map_location is not None:
        module.to(map_location)
    module.eval()
    return StoredGenerator(generator, config, ema)


def load_generator_state(
    path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """The generator tensors stored in `path` (as `load_stored` reads them, every one finite), without building
    the network they came from: training's `model.init_from` loads them strictly into the generator its own
    config builds, so any architecture (one outside this package included) can start from its PSNR stage."""
    return _read_generator(pretrained_path(path), use_ema, map_location)[0]


def load_generator(
    path: str | os.PathLike, *, use_ema: bool | None = None, map_location: Any = "cpu"
) -> tuple[SRGenerator, dict]:
    """`(generator, config)` of `load_stored`: the network alone."""
    stored = load_stored(path, use_ema=use_ema, map_location=map_location)
    return stored.generator, stored.config


def _as_plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of `config`; an OmegaConf config (a training run's) is resolved first. OmegaConf is only ever
    loaded here when the caller already holds one of its configs, so inference never imports it."""
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and omegaconf.OmegaConf.is_config(config):
        return cast(dict[str, Any], omegaconf.OmegaConf.to_container(config, resolve=True))
    return dict(config)


def save_generator_safetensors(
    generator: nn.Module | SRGenerator,
    config: Mapping[str, Any] | None,
    path: str | os.PathLike,
    *,
    ema: bool = False,
) -> Path:
    """Write `generator`'s weights to `path` (.safetensors) with its config: the sidecar JSON (written first, so a
    complete weights file always has its config beside it) and the same JSON inside the file. Atomic.

    `config` None (a peer's network, which spandrel rebuilds from its tensors alone) writes the tensors only and
    removes a stale sidecar. Returns the sidecar path. A folder that cannot be written is one `WeightsError`.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise WeightsError(f"{path}: safetensors output must end in {SAFETENSORS_SUFFIX}")
    reason = unwritable_reason(path.parent)
    if reason is not None:
        raise UnwritableFolder(path.parent, reason)
    tensors = {
        key: value.detach().cpu().contiguous().clone() for key, value in generator.state_dict().items()
    }
    config_path = sidecar_path(path)
    try:
        if config is None:
            config_path.unlink(missing_ok=True)
        else:
            plain_config = _as_plain_config(config)
            check_generator_config(plain_config, path)  # refuse now what load_generator would refuse later
            sidecar = {
                "format": SIDECAR_FORMAT,
                "version": SIDECAR_VERSION,
                "ema": ema,
                "generator": plain_config,
            }
            with atomic_path(config_path) as tmp:
                tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            tensors[CONFIG_TENSOR] = config_tensor(sidecar)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=None if config is None else {"format": SIDECAR_FORMAT})
    except OSError as error:  # the folder turned read-only or the disk filled up while writing
        raise UnwritableFolder(path.parent, error.strerror or str(error)) from None
    return config_path
