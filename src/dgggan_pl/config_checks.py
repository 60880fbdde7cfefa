"""Config values refused before a run starts, each with one line naming the key and what to do.

`dgggan_pl.train` calls `check_config` before it touches the run folder, so a typo never costs a run's records
(and never trains for hours on a meaningless value).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from dgggan_pl.config import ConfigError
from dgggan_pl.metrics.registry import unknown_metrics_message
from dgggan_pl.objective import ObjectiveSpec

# Keys that must be > 0, with what a sensible value is.
POSITIVE: Mapping[str, str] = {
    "iterations": "the number of generator updates (paper: 500000)",
    "data.batch_size": "the global batch over all processes (paper: 16)",
    "optim.generator.lr": "the generator's Adam learning rate (paper: 1e-4)",
    "optim.critic.lr": "the critics' Adam learning rate (paper: 1e-4)",
    "optim.n_critic": "critic updates per iteration (paper: 1)",
    "trainer.val_check_interval": "iterations between validations",
    "scale": "the super-resolution factor (paper: 4)",
    "hr_patch_size": "the HR training crop in pixels (paper: 192)",
}
NON_NEGATIVE: Mapping[str, str] = {
    "optim.gan_start_iteration": "generator-only iterations before the GAN phase",
    "data.num_workers": "data-loading worker processes; 0 loads in the training process",
}
# Keys that count things: a fraction would be truncated without a word (iterations=1.5 trained 1 iteration).
INTEGER = (
    "iterations",
    "data.batch_size",
    "optim.n_critic",
    "optim.gan_start_iteration",
    "trainer.val_check_interval",
    "scale",
    "hr_patch_size",
    "seed",
    "data.num_workers",
)
GPU_ACCELERATORS = ("gpu", "cuda")
MAX_STEPS_MESSAGE = (
    "trainer.max_steps is derived from `iterations` (Lightning counts every optimizer step: 1 + n_critic per "
    "GAN iteration); set iterations=N instead"
)


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is Hydra's mandatory `???` (read unresolved: no interpolation is evaluated)."""
    if node == "???":
        return [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [key for k, v in items for key in _missing_keys(v, f"{prefix}.{k}" if prefix else str(k))]


def _number(cfg: DictConfig, key: str) -> float | None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{key}={value!r}: not a number") from error


def check_config(
    cfg: DictConfig, cuda_available: bool | None = None, objective: ObjectiveSpec | None = None
) -> None:
    """Raise `ConfigError` for the first value that cannot work; `cuda_available` is for tests."""
    for key in INTEGER:
        value = _number(cfg, key)
        if value is not None and (isinstance(OmegaConf.select(cfg, key), bool) or not value.is_integer()):
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: must be a whole number")
    for key, meaning in POSITIVE.items():
        value = _number(cfg, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be > 0 ({meaning})")
    for key, meaning in NON_NEGATIVE.items():
        value = _number(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be >= 0 ({meaning})")
    if OmegaConf.select(cfg, "trainer.max_steps", default=None) is not None:
        raise ConfigError(MAX_STEPS_MESSAGE)
    check_crop(cfg, objective)
    check_generator_arguments(cfg)
    check_generator_builds(cfg)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if accelerator in GPU_ACCELERATORS and not cuda_available:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu/ddp) needs a CUDA GPU and none is visible here; "
            "use trainer=ddp_cpu (DDP over 2 CPU processes) or trainer=cpu"
        )
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ConfigError(f"{missing[0]} is required (??? in its config); set it, e.g. {missing[0]}=<value>")
    metrics = OmegaConf.select(cfg, "metrics.benchmark.metrics", default=None)
    unknown = unknown_metrics_message(list(metrics)) if metrics is not None else None
    if unknown:
        raise ConfigError(unknown)


def _used_critics(cfg: DictConfig, objective: ObjectiveSpec | None) -> list[str]:
    """The `model.<name>` critics the objective trains ([] when `cfg.loss` does not parse: its check says why)."""
    if objective is not None:  # the run's, parsed once by `check_objective`
        return list(objective.critics)
    try:
        return list(ObjectiveSpec.from_config(cfg.loss).critics)
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def check_crop(cfg: DictConfig, objective: ObjectiveSpec | None = None) -> None:
    """`hr_patch_size` must split into whole LR pixels (a multiple of `scale`) and survive the downsampling of
    every critic the objective trains (their own check, run on the meta device)."""
    size = OmegaConf.select(cfg, "hr_patch_size", default=None)
    scale = OmegaConf.select(cfg, "scale", default=None)
    if size is None or scale is None:
        return
    size, scale = int(size), int(scale)
    if size % scale:
        below = size - size % scale
        raise ConfigError(
            f"hr_patch_size={size}: must be a multiple of scale={scale} (the LR crop is hr_patch_size / scale); "
            f"use {below or scale}" + (f" or {below + scale}" if below else "")
        )
    if OmegaConf.select(cfg, "loss", default=None) is None:
        return
    for name in _used_critics(cfg, objective):
        node = OmegaConf.select(cfg, f"model.{name}", default=None)
        if not isinstance(node, DictConfig):
            continue
        refusal = _constructor_refusal(node)  # the critic's own size check, without its memory
        if refusal is not None:
            raise ConfigError(f"hr_patch_size={size}: model.{name}: {refusal}")


def _constructor_refusal(node: DictConfig) -> ValueError | None:
    """The ValueError the constructor `node` configures raises for its values, built on the meta device (no
    memory; Hydra wraps the error, this unwraps it); None when it builds. Any other error propagates."""
    from dgggan_pl.resume_checks import instantiate_on_meta  # imports Hydra's instantiate: only when needed

    try:
        instantiate_on_meta(node)
    except Exception as error:
        cause = error.__cause__ if isinstance(error.__cause__, ValueError) else error
        if isinstance(cause, ValueError):
            return cause
        raise
    return None


def _generator_node(cfg: DictConfig) -> DictConfig | None:
    """`model.generator` when it names a class to build, else None."""
    node = OmegaConf.select(cfg, "model.generator", default=None)
    return node if isinstance(node, DictConfig) and "_target_" in node else None


_HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})


def check_generator_arguments(cfg: DictConfig) -> None:
    """Every `model.generator.<key>` must be an argument of the class it builds: a key another generator takes
    (an ablation of DGGGAN's branches on `model=rrdbnet`, a typo) is named in one line instead of Hydra's
    instantiation traceback. A class that cannot be imported here, or that takes `**kwargs`, is left to Hydra."""
    node = _generator_node(cfg)
    if node is None:
        return
    from hydra.utils import get_class  # imports the generator's module: only where a config names one

    target = str(node._target_)
    try:
        parameters = inspect.signature(get_class(target)).parameters.values()
    except Exception:  # noqa: BLE001  (an unimportable class: instantiating it says why)
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters}
    unknown = [str(key) for key in node if key not in accepted and key not in _HYDRA_KEYS]
    if not unknown:
        return
    ablation = OmegaConf.select(cfg, "ablation.name", default=None)
    hint = (
        f"; ablation={ablation} sets it: the ablations change DGGGAN's generator, use ablation=none with this model"
        if ablation not in (None, "none")
        else "; remove it or choose the model that takes it"
    )
    raise ConfigError(
        f"model.generator.{unknown[0]}: {target} takes no such argument (it takes: {', '.join(sorted(accepted))})"
        + hint
    )


def check_generator_builds(cfg: DictConfig) -> None:
    """The generator's own checks of its values (e.g. an SE reduction that leaves no hidden channel) run here, on
    the meta device (no memory), so a bad value is one line before any run folder instead of a traceback from
    inside the run. Errors other than a constructor's ValueError are left to the run, which says more."""
    node = _generator_node(cfg)
    if node is None:
        return
    try:
        refusal = _constructor_refusal(node)
    except Exception:  # noqa: BLE001  (not a bad value: the run builds it again and says what went wrong)
        return
    if refusal is not None:
        raise ConfigError(f"model.generator: {refusal}")


INIT_FROM_KEY = "model.init_from"
RANDOM_GAN_START = (
    f"the GAN phase starts at iteration 0 from a randomly initialised generator ({INIT_FROM_KEY} is not set); "
    "the paper starts it from a PSNR-trained one: train it with experiment=pretrain, then pass "
    f"{INIT_FROM_KEY}=<pretrain run>/checkpoints/last.ckpt (or {INIT_FROM_KEY}=null on the command line to "
    "start from random weights on purpose and silence this warning)"
)


def command_line(overrides: Sequence[str] | None) -> list[str]:
    """`overrides` as given, else the command line's as Hydra recorded it (none outside a Hydra app)."""
    if overrides is not None:
        return list(overrides)
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _weight_outside_stage(key: str, value: Any, stage: Sequence[str]) -> str | None:
    """The term of a typed `loss.terms.<t>.weight=W` (or a whole `loss.terms.<t>={weight: W, ...}`) with W > 0
    that `stage` does not run, else None."""
    parts = key.split(".")
    if parts[:2] != ["loss", "terms"] or len(parts) not in (3, 4) or parts[2] in stage:
        return None
    if len(parts) == 3:
        value = value.get("weight") if isinstance(value, dict) else None
    elif parts[3] != "weight":
        return None
    return parts[2] if isinstance(value, int | float) and value > 0 else None


def check_objective(cfg: DictConfig, overrides: Sequence[str] | None = None) -> ObjectiveSpec:
    """`cfg.loss` parsed into the run's `ObjectiveSpec`, the one parse that `train` hands to `random_gan_start`,
    the module and the step budget. Refuses (ConfigError, before any run folder exists) what the parse refuses,
    an adversarial term without its `model.<critic>` config, and a weight typed on the command line for a term
    outside the stage (`loss.active`), which would otherwise be ignored. `overrides`: as in `random_gan_start`."""
    objective = ObjectiveSpec.from_config(cfg.loss)
    objective.check_critics(cfg.model)
    if objective.stage is None:
        return objective
    stage = list(objective.stage)
    for override in OverridesParser.create().parse_overrides(command_line(overrides)):
        key, value = override.key_or_group, override.value()
        term = None if override.is_delete() else _weight_outside_stage(key, value, stage)
        if term is not None:
            raise ConfigError(
                f"{key}={value}: loss.terms.{term} is not among the stage's terms (loss.active={stage}), so its "
                f"weight would be ignored; add it: loss.active=[{','.join([*stage, term])}]"
            )
    return objective


def explicitly_null(key: str, overrides: Sequence[str]) -> bool:
    """Whether the command-line overrides set `key` to null (`key=null`, `+key=null`, `++key=null`).

    The config's own default is null too, so only the typed override tells a deliberate choice apart.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return any(o.key_or_group == key and not o.is_delete() and o.value() is None for o in parsed)


def random_gan_start(
    cfg: DictConfig,
    ckpt_path: str | None,
    overrides: Sequence[str] | None = None,
    objective: ObjectiveSpec | None = None,
) -> str | None:
    """The warning for a fresh run whose adversarial terms train a random generator from iteration 0
    (`experiment=full` without `model.init_from`), or None. `overrides`: the command line's (default: Hydra's);
    `objective`: the run's (`check_objective`; parsed from `cfg.loss` when not given)."""
    if ckpt_path is not None or OmegaConf.select(cfg, INIT_FROM_KEY, default=None):
        return None  # resuming continues the run's own generator; init_from names a trained one
    objective = objective or ObjectiveSpec.from_config(cfg.loss)
    if not objective.critics or int(cfg.optim.get("gan_start_iteration", 0)) > 0:
        return None  # no GAN phase, or a generator-only warm-up before it
    return None if explicitly_null(INIT_FROM_KEY, command_line(overrides)) else RANDOM_GAN_START
