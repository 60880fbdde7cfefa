"""DGGGANModule: the WGAN-GP training step, validation on benchmark sets, optimizers (docs/design.md).

One iteration = `optim.n_critic` updates of the critics, then one generator update (manual optimization); the
objective (which terms, which critics) is `loss.terms`, see `dgggan_pl.objective`. The generator is any
`nn.Module` of the contract in `dgggan_pl.models.contract`: its output alone decides whether the gradient-map
terms run.
Before `optim.gan_start_iteration` (and always when the config builds no critics, e.g. `experiment=pretrain`)
an iteration is a single generator update without adversarial terms.
"""

from __future__ import annotations

import copy
import logging
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from dgggan_pl.metrics.keys import benchmark_key
from dgggan_pl.metrics.suite import BenchmarkMetrics
from dgggan_pl.models.contract import GeneratorOutput, generator_output, outputs_gradient_map
from dgggan_pl.objective import Objective, ObjectiveSpec, Stats
from dgggan_pl.strategies import STRATEGY_NAME  # noqa: F401 (importing registers strategy=ddp_step_sync)

log = logging.getLogger(__name__)

STATE_KEY = "dgggan"  # our own entry in Lightning checkpoints: iteration counter and RNG states


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run is diverging."""


class DGGGANModule(LightningModule):
    """Generator + image critic + gradient critic, trained with eq. 7 (generator) and eq. 10 (critics).

    Args (plain containers, e.g. `OmegaConf.to_container(cfg.model, resolve=True)`, so checkpoints hold no
    objects and load with `torch.load(weights_only=True)`):
        model: `cfg.model`: `generator` and the critics' `_target_` configs (a critic no term uses may be null).
        loss: `cfg.loss`: `terms` (eq. 7), `active` and `critic_loss` (eq. 10); see `dgggan_pl.objective`.
        optim: `cfg.optim`: `generator`, `critic`, `scheduler` (`_partial_`), `n_critic`, `gan_start_iteration`,
            `ema_decay` (null = no EMA), `max_consecutive_nonfinite`.
        metrics: `cfg.metrics` (its `benchmark` node is a `_partial_` BenchmarkMetrics); null skips metrics.
        seed: with the rank, iteration and critic update, seeds the gradient penalty's interpolation weights,
            so that they do not depend on global RNG state (exact resume; the data is seeded per sample).
        val_sets, test_sets: the validation / test set names in dataloader order (the datamodule's
            `val_set_names` / `test_set_names`); metrics are logged as `val/<name>/<metric>`.
        objective: `loss` as `ObjectiveSpec.from_config` parsed it (train's config check does, once per run);
            parsed here when not given. Not a hyperparameter: `loss` is the record.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        seed: int = 0,
        val_sets: Sequence[str] = (),
        test_sets: Sequence[str] = (),
        objective: ObjectiveSpec | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.val_sets, self.test_sets = list(val_sets), list(test_sets)
        self.automatic_optimization = False
        self.generator = instantiate(model["generator"])
        spec = objective if objective is not None else ObjectiveSpec.from_config(loss)
        if spec.gradient_map_terms and not outputs_gradient_map(self.generator):
            log.info("loss.terms %s off: the generator outputs no gradient map", spec.gradient_map_terms)
            spec = spec.without_gradient_map()
        spec.check_critics(model)
        self.objective = Objective(spec)
        # A critic exists only while an adversarial term that runs names it (experiment=pretrain runs none);
        # every critic a term names keeps its attribute (None when unused) and state-dict prefix.
        for name in spec.critic_slots:
            if not name.isidentifier() or hasattr(self, name):
                raise ValueError(
                    f"loss.terms: critic name {name!r} must be a fresh identifier (a model.<name> key)"
                )
            setattr(self, name, instantiate(model[name]) if name in self.objective.critics else None)
        self.generator_ema: nn.Module | None = None
        if optim.get("ema_decay") is not None:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        # One BenchmarkMetrics per set, also kept out of the module tree; built here, so that what cannot be
        # computed is known before training (it warns itself about such metrics).
        self._metrics: dict[str, BenchmarkMetrics] = {}
        if metrics is not None:
            factory = instantiate(metrics["benchmark"])
            self._metrics = {name: factory() for name in dict.fromkeys(self.val_sets + self.test_sets)}
        self.iteration = 0
        self._consecutive_nonfinite = 0

    @property
    def critics(self) -> dict[str, nn.Module]:
        """The trained critics by name (`model.<name>`), in the order of their adversarial terms."""
        return {name: getattr(self, name) for name in self.objective.critics}

    @property
    def gan_active(self) -> bool:
        """Whether this iteration trains the critics and uses the adversarial terms."""
        return bool(self.critics) and self.iteration >= self.hparams["optim"].get("gan_start_iteration", 0)

    @property
    def eval_generator(self) -> nn.Module:
        """The generator used for validation, test and export: the EMA copy when EMA is on."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def unavailable_metrics(self) -> dict[str, str]:
        """Metric name -> reason, for metrics the BenchmarkMetrics backend cannot compute here."""
        metrics = next(iter(self._metrics.values()), None)
        return {} if metrics is None else dict(metrics.unavailable)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One iteration: critic update(s) on the detached SR, then one generator update."""
        lr, hr = batch["lr"], batch["hr"]
        optimizers = self.optimizers()
        opt_g, opt_d = (optimizers, None) if not isinstance(optimizers, list) else optimizers
        out = generator_output(self.generator(lr))

        if self.gan_active:  # critic step(s): eq. 10 on the detached SR, the generator frozen
            for update in range(self.hparams["optim"]["n_critic"]):
                noise = self._noise_generator(hr.device, update)
                self._optimize(opt_d, partial(self._critic_objective, out, hr, noise), "critic")

        # generator step: eq. 7 through the just-updated critics, the critics frozen
        self._optimize(opt_g, partial(self._generator_objective, out, hr), "generator")

        self._after_iteration()

    def _noise_generator(self, device: torch.device, critic_update: int) -> torch.Generator:
        """A generator seeded by (seed, rank, iteration, critic update) alone, for the penalty's interpolation."""
        key = [self.hparams["seed"], self.global_rank, self.iteration, critic_update]
        seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator(device=device).manual_seed(seed)

    def _critic_objective(
        self, out: GeneratorOutput, hr: Tensor, noise: torch.Generator
    ) -> tuple[Tensor, Stats]:
        """Eq. 10 for every critic on the pair its adversarial term compares (the SR detached), summed."""
        return self.objective.critics_loss(out, hr, self.critics, noise)

    def _generator_objective(self, out: GeneratorOutput, hr: Tensor) -> tuple[Tensor, Stats]:
        """Eq. 7: the weighted sum of the configured terms (adversarial ones once the GAN phase runs)."""
        return self.objective.generator_loss(out, hr, self.critics, adversarial=self.gan_active)

    def _optimize(
        self, optimizer: Any, objective: Callable[[], tuple[Tensor, dict[str, Tensor]]], name: str
    ) -> None:
        """toggle -> loss -> (skip if non-finite on any rank) -> manual_backward -> step -> untoggle."""
        self.toggle_optimizer(optimizer)
        loss, stats = objective()
        if self._finite_on_every_rank(loss):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            self._consecutive_nonfinite = 0
        else:
            self._on_nonfinite(name, stats)
        self.untoggle_optimizer(optimizer)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, prog_bar=False)

    def _finite_on_every_rank(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank: the one host synchronisation of an optimizer step.

        The finite flag stays a device tensor through the all-reduce (MIN over ranks), and is read once, because
        whether to step is a host decision. Lightning's `reduce_boolean_decision` reads it twice, and its
        `strategy.reduce` adds a barrier (on NCCL, one more synchronisation).
        """
        finite = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def _on_nonfinite(self, name: str, stats: Mapping[str, Tensor]) -> None:
        self._consecutive_nonfinite += 1
        self.log(f"train/nonfinite_{name}", torch.ones(()))
        limit = self.hparams["optim"]["max_consecutive_nonfinite"]
        bad = {k: float(v) for k, v in stats.items() if not torch.isfinite(v)}
        log.warning("iteration %d: non-finite %s loss %s, step skipped", self.iteration, name, bad)
        if self._consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{self._consecutive_nonfinite} consecutive non-finite losses (last: {name} step at iteration "
                f"{self.iteration}, terms {bad}); the run is diverging. Lower the learning rate (optim.*.lr), "
                "check the data, or resume from an earlier checkpoint; optim.max_consecutive_nonfinite sets the limit"
            )

    def _after_iteration(self) -> None:
        """Once per iteration: EMA update, scheduler steps, counters."""
        if self.generator_ema is not None:
            decay = self.hparams["optim"]["ema_decay"]
            with torch.no_grad():
                ema = list(self.generator_ema.parameters()) + list(self.generator_ema.buffers())
                live = list(self.generator.parameters()) + list(self.generator.buffers())
                torch._foreach_lerp_(ema, live, 1.0 - decay)
        schedulers = self.lr_schedulers()
        with warnings.catch_warnings():
            # The critic optimizer idles during the generator-only warm-up, but its schedule counts iterations.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                if scheduler is not None:
                    scheduler.step()
        self.iteration += 1
        # Host values are logged as CPU tensors: a Python number would become a device tensor, and its copy
        # to the GPU waits for every kernel queued so far (a host synchronisation per iteration).
        self.log("train/lr_g", torch.tensor(self.optimizers_list()[0].param_groups[0]["lr"]))
        self.log("train/iteration", torch.tensor(float(self.iteration)), prog_bar=True)

    def optimizers_list(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """Adam for G and one Adam over both critics (Adam is per-parameter, so one or two is the same)."""
        optim = self.hparams["optim"]
        optimizers = [instantiate(optim["generator"])(self.generator.parameters())]
        if self.critics:
            critic_params = [p for critic in self.critics.values() for p in critic.parameters()]
            optimizers.append(instantiate(optim["critic"])(critic_params))
        schedulers = [instantiate(optim["scheduler"])(o) for o in optimizers]
        return optimizers, schedulers

    # ------------------------------------------------------------------ validation and test
    def _move_frozen(self) -> None:
        self.objective.to(self.device)
        for network in self._metrics.values():
            network.to(self.device)

    def on_fit_start(self) -> None:
        self._move_frozen()

    def _check_set_names(self, key: str, names: list[str], num_loaders: int) -> None:
        """Metrics are kept per set name: one name per evaluation dataloader."""
        if self._metrics and len(names) != num_loaders:
            raise ValueError(
                f"DGGGANModule got {key}={names} but the trainer has {num_loaders} {key} dataloader(s); "
                f"pass the datamodule's {key.rstrip('s')}_set_names"
            )

    def on_validation_start(self) -> None:
        self._check_eval_precision()
        self._check_set_names("val_sets", self.val_sets, len(self.trainer.num_val_batches))
        self._move_frozen()

    def on_test_start(self) -> None:
        self._check_eval_precision()
        self._check_set_names("test_sets", self.test_sets, len(self.trainer.num_test_batches))
        self._move_frozen()

    def _check_eval_precision(self) -> None:
        """Evaluation runs in float32: a `*-true` precision that keeps the weights in another dtype is refused."""
        dtype = next(self.eval_generator.parameters()).dtype
        if dtype != torch.float32:
            raise ValueError(
                f"trainer.precision keeps the generator in {dtype}, but validation and test run in float32 "
                "(the tables are compared to 0.01 dB); use trainer.precision=32-true, bf16-mixed or 16-mixed"
            )

    def _eval_step(
        self, batch: dict[str, Any], set_names: list[str], dataloader_idx: int
    ) -> dict[str, Tensor | None]:
        # Always float32 with autocast off, whatever trainer.precision is: bf16 evaluation moves Y-PSNR by
        # up to 0.07 dB on one image, and the tables are compared to 0.01 dB.
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = generator_output(self.eval_generator(batch["lr"].float()))
        sr = out.sr.clamp(0, 1)
        if self._metrics:
            self._metrics[set_names[dataloader_idx]].update(sr.float(), batch["hr"].float(), batch["name"])
        return {"sr": sr, "grad_map": out.grad_map}

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor | None]:
        return self._eval_step(batch, self.val_sets, dataloader_idx)

    def test_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor | None]:
        return self._eval_step(batch, self.test_sets, dataloader_idx)

    def _log_metrics(self, prefix: str, set_names: list[str]) -> None:
        for name in set_names:
            if name not in self._metrics:
                continue
            for key, value in self._metrics[name].compute().items():
                # BenchmarkMetrics is already synchronised across ranks (torchmetrics states), so every rank
                # holds the same value. sync_dist keeps Lightning quiet; "max" of identical numbers is exact,
                # where a mean (sum / world size) may move the last bit and part from the 1-process value.
                self.log(
                    benchmark_key(prefix, name, key),
                    float(value),
                    add_dataloader_idx=False,
                    sync_dist=True,
                    reduce_fx="max",
                )
            self._metrics[name].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_sets)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_sets)

    # ------------------------------------------------------------------ checkpoint extras (exact resume)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {
            "iteration": self.iteration,
            "consecutive_nonfinite": self._consecutive_nonfinite,
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            raise KeyError(
                f"checkpoint has no '{STATE_KEY}' entry (not written by DGGGANModule); use model.init_from "
                "to start from its generator weights instead of resuming"
            )
        self.iteration = int(state["iteration"])
        self._consecutive_nonfinite = int(state["consecutive_nonfinite"])
        restore_rng_state(state["rng"])


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG the training step or the data pipeline may draw from, as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy tuple form
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state:
        restore_cuda_rng_states(list(state["cuda"]))


def restore_cuda_rng_states(saved: list[Tensor]) -> None:
    """Give each visible GPU the state saved for the GPU of the same index, as far as both exist.

    A run resumed on a node with fewer (or more, or no) GPUs must not fail on the missing indices; the
    resumed run is then no longer bit-exact, which the log says.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved) != count:
        log.warning(
            "checkpoint holds CUDA RNG states of %d GPU(s), this process sees %d: restoring %d; the resumed "
            "run is not bit-identical to an uninterrupted one",
            len(saved),
            count,
            min(len(saved), count),
        )
    for index, rng_state in enumerate(saved[:count]):
        torch.cuda.set_rng_state(rng_state, index)
