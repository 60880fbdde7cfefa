"""The training objective as configured in `conf/loss/`: weighted terms, the critics they imply, the step count.

`loss.terms` maps a term name to `{weight, input, loss, critic?}` (conf/loss/dgggan.yaml documents the keys).
Everything else follows from that list, here and nowhere else:
- the generator objective (eq. 7) = sum of weight x term over the terms with weight > 0;
- the critics: one per `critic` named by an adversarial term with weight > 0, each trained with
  `loss.critic_loss` (eq. 10) on the pair its term compares (HR vs detached SR, or G(HR) vs G(SR));
- the optimizer steps an iteration takes (`optimizer_steps`), which Lightning's `max_steps` counts.

Only plain containers go in and out of the config helpers, so checkpoints keep loading with
`torch.load(weights_only=True)`. Loss networks (VGG19) are kept out of the LightningModule's tree: they are
not trained, not synchronised by DDP and not written into checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from dgggan_pl.models.generator import GeneratorOutput
from dgggan_pl.models.gradient import gradient_magnitude

# What a term compares, as (prediction, target): the SR image vs HR, its gradient map G(SR) vs G(HR), or the
# gradient branch's own output vs G(HR).
INPUTS = ("sr", "sr_gradient", "grad_map")
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


def term_specs(loss: Mapping[str, Any]) -> list[TermSpec]:
    """The active terms (weight > 0) of `loss.terms`, checked; a null entry or weight 0 drops a term."""
    terms = loss.get("terms")
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError(
            "loss.terms must map term names to {weight, input, loss} (see conf/loss/dgggan.yaml)"
        )
    specs = []
    for name, term in terms.items():
        if term is None:
            continue
        key = f"loss.terms.{name}"
        unknown = sorted(set(term) - TERM_KEYS)
        missing = sorted({"weight", "input", "loss"} - set(term))
        if unknown or missing:
            raise ValueError(
                f"{key}: unknown keys {unknown}, missing keys {missing}; a term has {sorted(TERM_KEYS)}"
            )
        weight = float(term["weight"])
        if weight < 0:
            raise ValueError(f"{key}.weight={weight} is negative; use 0 to drop the term")
        if term["input"] not in INPUTS:
            raise ValueError(f"{key}.input={term['input']!r} is not one of {list(INPUTS)}")
        if weight > 0:
            specs.append(TermSpec(str(name), weight, term["input"], term["loss"], term.get("critic")))
    check_active(loss.get("active"), terms, specs)
    if not specs:
        raise ValueError("loss.terms: every term has weight 0; the generator would have nothing to minimise")
    return specs


def check_active(active: Any, terms: Mapping[str, Any], specs: list[TermSpec]) -> None:
    """A stage preset's `loss.active` (conf/loss/pretrain.yaml) names existing terms, and no other term has a
    weight: a term added to the paper's objective never joins a stage unasked."""
    if active is None:
        return
    unknown = [name for name in active if name not in terms]
    if unknown:
        raise ValueError(f"loss.active names {unknown}, which loss.terms lacks (terms: {list(terms)})")
    for spec in specs:
        if spec.name not in active:
            raise ValueError(
                f"loss.terms.{spec.name}.weight={spec.weight} but loss.active={list(active)} leaves it out: "
                f"add it (loss.active=[{','.join([*active, spec.name])}]) or set loss.terms.{spec.name}.weight=0"
            )


def critic_inputs(loss: Mapping[str, Any]) -> dict[str, str]:
    """Critic name (a `model.<name>` config) -> the input it judges, for the adversarial terms with weight > 0."""
    critics: dict[str, str] = {}
    for spec in term_specs(loss):
        if spec.critic is None:
            continue
        seen = critics.setdefault(spec.critic, spec.input)
        if seen != spec.input:
            raise ValueError(
                f"loss.terms.{spec.name}: critic {spec.critic} already judges input {seen}; one critic, one input"
            )
    return critics


def critic_slots(loss: Mapping[str, Any]) -> list[str]:
    """Every critic any term names, active or not (the module keeps an attribute, None when unused, for each)."""
    return list(dict.fromkeys(t["critic"] for t in loss["terms"].values() if t and t.get("critic")))


def optimizer_steps(iterations: int, optim: Mapping[str, Any], loss: Mapping[str, Any]) -> int:
    """Optimizer steps of `iterations` iterations: what Lightning's `Trainer.max_steps` counts.

    A GAN iteration steps the critic optimizer `optim.n_critic` times and the generator once; a generator-only
    iteration (no critic, or before `optim.gan_start_iteration`) steps once.
    """
    if not critic_inputs(loss):
        return iterations
    warmup = min(int(optim["gan_start_iteration"]), iterations)
    return warmup + (iterations - warmup) * (1 + int(optim["n_critic"]))


def check_model(loss: Mapping[str, Any], model: Mapping[str, Any], use_gradient_branch: bool) -> None:
    """Refuse terms the model cannot serve: a missing critic config, or a gradient-branch input without one."""
    problems = []
    for spec in term_specs(loss):
        if spec.critic is not None and not model.get(spec.critic):
            problems.append(f"loss.terms.{spec.name} needs a model.{spec.critic} config (or weight 0)")
        if spec.input == "grad_map" and not use_gradient_branch:
            problems.append(
                f"loss.terms.{spec.name} (input grad_map) needs model.generator.use_gradient_branch=true "
                "(or weight 0; ablation=no_grad sets it)"
            )
    if problems:
        raise ValueError("Inconsistent objective: " + "; ".join(problems))


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
            elif name == "grad_map":
                if self.out.grad_map is None:
                    raise ValueError("input grad_map: the generator has no gradient branch")
                self._cache[name] = (self.out.grad_map, self.hr_gradient())
            else:
                raise KeyError(name)
        return self._cache[name]


Stats = dict[str, Tensor]


class Objective:
    """The instantiated terms of `loss.terms` (weight > 0) and the critics' loss; not an nn.Module (see above)."""

    def __init__(self, loss: Mapping[str, Any]) -> None:
        self.specs = term_specs(loss)
        self.critics = critic_inputs(loss)  # name -> input
        self.terms: dict[str, Callable[..., Tensor]] = {s.name: instantiate(s.loss) for s in self.specs}
        self.critic_loss = instantiate(loss["critic_loss"]) if self.critics else None

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
        for spec in self.specs:
            prediction, target = pairs[spec.input]
            if spec.critic is None:
                value = self.terms[spec.name](prediction, target)
            elif adversarial:
                value = self.terms[spec.name](critics[spec.critic](prediction))
            else:
                continue
            weighted = spec.weight * value
            total = weighted if total is None else total + weighted
            stats[f"loss_{spec.name}"] = value.detach()
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
