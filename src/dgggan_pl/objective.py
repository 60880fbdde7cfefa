"""The training objective as configured in `conf/loss/`: weighted terms, the critics they imply, the step count.

`loss.terms` maps a term name to `{weight, input, loss, critic?}` (conf/loss/dgggan.yaml documents the keys);
`loss.active` names the terms a stage runs (null: every term with weight > 0). `ObjectiveSpec.from_config` reads
that config once, and everything else follows from the spec it returns, here and nowhere else:
- the generator objective (eq. 7) = sum of weight x term over the terms that run;
- the critics: one per `critic` named by an adversarial term that runs, each trained with `loss.critic_loss`
  (eq. 10) on the pair its term compares (HR vs detached SR, or G(HR) vs G(SR));
- the optimizer steps an iteration takes (`ObjectiveSpec.optimizer_steps`), which Lightning's `max_steps` counts;
- for a generator without a gradient map, the same spec without the terms on `grad_map` (`without_gradient_map`).
The config checks, `random_gan_start`, the LightningModule and the step budget all receive the one spec.

Only plain containers go in and out of the config, so checkpoints keep loading with
`torch.load(weights_only=True)`. Loss networks (VGG19) are kept out of the LightningModule's tree: they are
not trained, not synchronised by DDP and not written into checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dgggan_pl.config import ConfigError
from dgggan_pl.models.contract import GeneratorOutput
from dgggan_pl.models.gradient import gradient_magnitude

# What a term compares, as (prediction, target): the SR image vs HR, its gradient map G(SR) vs G(HR), or the
# gradient branch's own output vs G(HR). Only `grad_map` depends on the generator: not every one outputs it.
INPUTS = ("sr", "sr_gradient", "grad_map")
GRADIENT_MAP = "grad_map"
TERM_KEYS = {"weight", "input", "loss", "critic"}


@dataclass(frozen=True)
class TermSpec:
    """One configured term: `loss.terms.<name>`."""

    name: str
    weight: float
    input: str
    loss: Mapping[str, Any]
    critic: str | None = None

    @property
    def adversarial(self) -> bool:
        return self.critic is not None


def _plain(node: Any) -> Any:
    """A DictConfig as plain containers (resolved), anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _term(name: str, term: Mapping[str, Any]) -> TermSpec:
    """`loss.terms.<name>`, checked."""
    key = f"loss.terms.{name}"
    unknown = sorted(set(term) - TERM_KEYS)
    missing = sorted({"weight", "input", "loss"} - set(term))
    if unknown or missing:
        raise ConfigError(
            f"{key}: unknown keys {unknown}, missing keys {missing}; a term has {sorted(TERM_KEYS)}"
        )
    weight = float(term["weight"])
    if weight < 0:
        raise ConfigError(f"{key}.weight={weight} is negative; use 0 to drop the term")
    if term["input"] not in INPUTS:
        raise ConfigError(f"{key}.input={term['input']!r} is not one of {list(INPUTS)}")
    return TermSpec(name, weight, term["input"], term["loss"], term.get("critic"))


def _critics(terms: Sequence[TermSpec]) -> dict[str, str]:
    """Critic name (a `model.<name>` config) -> the input it judges, from the adversarial terms that run."""
    critics: dict[str, str] = {}
    for term in terms:
        if term.critic is None:
            continue
        seen = critics.setdefault(term.critic, term.input)
        if seen != term.input:
            raise ConfigError(
                f"loss.terms.{term.name}: critic {term.critic} already judges input {seen}; one critic, one input"
            )
    return critics


@dataclass(frozen=True)
class ObjectiveSpec:
    """`cfg.loss` read once: the terms that run, the critics they imply, eq. 10's loss.

    Fields:
        terms: the terms that run (in the stage, weight > 0), in config order.
        critics: critic name -> the input it judges, for the adversarial terms that run.
        critic_slots: every critic any term names, running or not (the module keeps an attribute for each,
            None when unused, so that state-dict prefixes do not depend on the stage).
        critic_loss: `loss.critic_loss` (eq. 10), None when no critic trains.
        stage: `loss.active` (the stage's terms), None for "every term with weight > 0".
    """

    terms: tuple[TermSpec, ...]
    critics: Mapping[str, str]
    critic_slots: tuple[str, ...]
    critic_loss: Mapping[str, Any] | None
    stage: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, loss: Mapping[str, Any]) -> ObjectiveSpec:
        """Parse `cfg.loss` (a DictConfig or plain dict); a malformed one raises ConfigError naming the key."""
        loss = _plain(loss)
        config = loss.get("terms")
        if not isinstance(config, Mapping) or not config:
            raise ConfigError(
                "loss.terms must map term names to {weight, input, loss} (see conf/loss/dgggan.yaml)"
            )
        all_terms = [_term(str(name), term) for name, term in config.items() if term is not None]
        active = loss.get("active")
        stage = None if active is None else tuple(str(name) for name in active)
        unknown = [name for name in stage or () if name not in config]
        if unknown:
            raise ConfigError(f"loss.active names {unknown}, which loss.terms lacks (terms: {list(config)})")
        terms = tuple(t for t in all_terms if t.weight > 0 and (stage is None or t.name in stage))
        if not terms:
            raise ConfigError(
                "loss.terms: every term of the stage has weight 0; the generator would have nothing to minimise"
            )
        critics = _critics(terms)
        if critics and not loss.get("critic_loss"):
            raise ConfigError(f"loss.critic_loss is required: critics {list(critics)} train with it (eq. 10)")
        return cls(
            terms=terms,
            critics=critics,
            critic_slots=tuple(dict.fromkeys(t.critic for t in all_terms if t.critic is not None)),
            critic_loss=loss.get("critic_loss") if critics else None,
            stage=stage,
        )

    @property
    def gradient_map_terms(self) -> list[str]:
        """The terms that compare the generator's gradient map (`input: grad_map`)."""
        return [t.name for t in self.terms if t.input == GRADIENT_MAP]

    def without_gradient_map(self) -> ObjectiveSpec:
        """The spec for a generator that outputs no gradient map: its `grad_map` terms are off."""
        terms = tuple(t for t in self.terms if t.input != GRADIENT_MAP)
        if not terms:
            raise ConfigError(
                f"loss.terms: only {self.gradient_map_terms} run, and they need a gradient map, which this "
                "generator does not output; give a term on input sr or sr_gradient a weight"
            )
        critics = _critics(terms)
        return dataclasses.replace(
            self, terms=terms, critics=critics, critic_loss=self.critic_loss if critics else None
        )

    def check_critics(self, model: Mapping[str, Any]) -> None:
        """Refuse a running adversarial term whose critic has no `model.<critic>` config."""
        problems = [
            f"loss.terms.{t.name} needs a model.{t.critic} config (or weight 0)"
            for t in self.terms
            if t.critic is not None and not model.get(t.critic)
        ]
        if problems:
            raise ConfigError("Inconsistent objective: " + "; ".join(problems))

    def optimizer_steps(self, iterations: int, optim: Mapping[str, Any]) -> int:
        """Optimizer steps of `iterations` iterations: what Lightning's `Trainer.max_steps` counts.

        A GAN iteration steps the critic optimizer `optim.n_critic` times and the generator once; a
        generator-only iteration (no critic, or before `optim.gan_start_iteration`) steps once.
        """
        if not self.critics:
            return iterations
        warmup = min(int(optim["gan_start_iteration"]), iterations)
        return warmup + (iterations - warmup) * (1 + int(optim["n_critic"]))


class InputPairs:
    """The (prediction, target) pairs of one generator output and HR batch, each computed once, on demand."""

    def __init__(self, out: GeneratorOutput, hr: Tensor) -> None:
        self.out, self.hr = out, hr
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._hr_gradient: Tensor | None = None

    def hr_gradient(self) -> Tensor:
        if self._hr_gradient is None:
            self._hr_gradient = gradient_magnitude(self.hr)
        return self._hr_gradient

    def __getitem__(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self._cache:
            if name == "sr":
                self._cache[name] = (self.out.sr, self.hr)
            elif name == "sr_gradient":
                self._cache[name] = (gradient_magnitude(self.out.sr), self.hr_gradient())
            elif name == GRADIENT_MAP:
                if self.out.grad_map is None:  # the module drops these terms (`without_gradient_map`)
                    raise ValueError("input grad_map: the generator outputs no gradient map")
                self._cache[name] = (self.out.grad_map, self.hr_gradient())
            else:
                raise KeyError(name)
        return self._cache[name]


Stats = dict[str, Tensor]


class Objective:
    """The instantiated terms of an `ObjectiveSpec` and the critics' loss; not an nn.Module (see above)."""

    def __init__(self, spec: ObjectiveSpec) -> None:
        self.spec = spec
        self.critics = spec.critics  # name -> input
        self.terms: dict[str, Callable[..., Tensor]] = {t.name: instantiate(t.loss) for t in spec.terms}
        self.critic_loss = instantiate(spec.critic_loss) if spec.critic_loss is not None else None

    def to(self, device: torch.device) -> Objective:
        for term in self.terms.values():
            if isinstance(term, nn.Module):
                term.to(device)
        return self

    def generator_loss(
        self, out: GeneratorOutput, hr: Tensor, critics: Mapping[str, nn.Module], adversarial: bool
    ) -> tuple[Tensor, Stats]:
        """Eq. 7: the weighted sum; `adversarial=False` (warm-up) leaves the critics' terms out.

        Stats hold each unweighted term as `loss_<name>` and the total as `loss_g`.
        """
        pairs = InputPairs(out, hr)
        total: Tensor | None = None
        stats: dict[str, Tensor] = {}
        for term in self.spec.terms:
            prediction, target = pairs[term.input]
            if term.critic is None:
                value = self.terms[term.name](prediction, target)
            elif adversarial:
                value = self.terms[term.name](critics[term.critic](prediction))
            else:
                continue
            weighted = term.weight * value
            total = weighted if total is None else total + weighted
            stats[f"loss_{term.name}"] = value.detach()
        if total is None:
            raise ValueError(
                "loss.terms: only adversarial terms have weight > 0, so the generator-only warm-up "
                "(optim.gan_start_iteration) has nothing to minimise; give a reconstruction term a weight"
            )
        stats["loss_g"] = total.detach()
        return total, stats

    def critics_loss(
        self, out: GeneratorOutput, hr: Tensor, critics: Mapping[str, nn.Module], noise: torch.Generator
    ) -> tuple[Tensor, Stats]:
        """Eq. 10 for every critic on its input pair (the generator output detached), summed.

        Stats per critic: `<critic>/wdist` (mean D(real) - mean D(fake)), `<critic>/gp`, `<critic>/loss_d`.
        """
        assert self.critic_loss is not None, "critics_loss needs an adversarial term"
        detached = GeneratorOutput(out.sr.detach(), None if out.grad_map is None else out.grad_map.detach())
        pairs = InputPairs(detached, hr)
        total: Tensor | None = None
        stats: dict[str, Tensor] = {}
        for name, input_name in self.critics.items():
            fake, real = pairs[input_name]
            loss, wdist, penalty = self.critic_loss(critics[name], real, fake, noise)
            total = loss if total is None else total + loss
            stats |= {f"{name}/wdist": wdist, f"{name}/gp": penalty, f"{name}/loss_d": loss.detach()}
        assert total is not None
        return total, stats
