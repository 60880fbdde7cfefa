"""Floating-point operations of one training iteration (docs/design.md#flops-of-one-iteration).

Counted, not estimated: the networks are built from the composed config under `FakeTensorMode` (shapes only, no
memory, no arithmetic) and the objective's own code (`Objective.critics_loss`, `Objective.generator_loss`) runs
with the backward passes of a training iteration, while a dispatch mode adds up torch's FLOP formulas
(`torch.utils.flop_counter`: 2 x MACs of convolutions and matmuls, their backward and double backward; bias,
activations and elementwise ops are not counted). `FlopCounterMode` itself cannot count the gradient penalty: its
module hooks refuse `autograd.grad` on a leaf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from dgggan_pl.models.generator import GeneratorOutput


class _FlopCount(TorchDispatchMode):
    """Adds torch's registered FLOP formula of every dispatched op (`FlopCounterMode`'s table, no module hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self._registry = FlopCounterMode(display=False).flop_registry

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything `fn()` dispatches (forward, backward and double backward alike)."""
    counter = _FlopCount()
    with counter:
        fn()
    return counter.flops


def _backward(loss: Tensor) -> None:
    loss.backward()


def iteration_flops(cfg: DictConfig, batch: int | None = None) -> dict[str, float]:
    """FLOPs of one iteration of `cfg`'s objective at `batch` (default `data.batch_size`), by component.

    Returns `generator_forward`, `perceptual_forward` (VGG19 on one batch), `critic_forward` (one critic on one
    batch), `critic_step` (eq. 10 for every critic with the penalty, forward and backward) and
    `generator_step` (generator forward and backward, eq. 7's VGG19 and critic terms with their backward through
    the frozen networks), and `iteration` = critic_step x n_critic + generator_step.
    """
    from dgggan_pl.train import build_module  # late: train imports the whole stack

    batch = int(cfg.data.batch_size if batch is None else batch)
    cfg = cfg.copy()
    OmegaConf.update(cfg, "metrics", None, force_add=True)  # no metric networks: they do not train
    OmegaConf.update(cfg, "compile", False, force_add=True)
    OmegaConf.update(cfg, "model.init_from", None, force_add=True)
    hr_size, scale = int(cfg.hr_patch_size), int(cfg.scale)
    with FakeTensorMode(allow_non_fake_inputs=True):
        module = build_module(cfg)
        lr = torch.rand(batch, 3, hr_size // scale, hr_size // scale)
        hr = torch.rand(batch, 3, hr_size, hr_size)
        return _count_iteration(module, lr, hr, int(cfg.optim.n_critic))


def _count_iteration(module: Any, lr: Tensor, hr: Tensor, n_critic: int) -> dict[str, float]:
    objective, critics = module.objective, module.critics
    flops: dict[str, float] = {"generator_forward": count_flops(lambda: module.generator(lr))}
    percept = objective.terms.get("percept")
    if isinstance(percept, nn.Module):
        features = cast(nn.Module, percept.features)  # VGG19 to conv5_4, on one batch
        flops["perceptual_forward"] = count_flops(lambda: features(hr))
    if critics:
        flops["critic_forward"] = count_flops(lambda: next(iter(critics.values()))(hr))
        out = module.generator(lr)
        detached = GeneratorOutput(out.sr.detach(), None if out.grad_map is None else out.grad_map.detach())
        # noise=None: the penalty draws its interpolation weights from the global RNG (same cost)
        flops["critic_step"] = count_flops(
            lambda: _backward(objective.critics_loss(detached, hr, critics, None)[0])  # type: ignore[arg-type]
        )
    for critic in critics.values():  # the generator step trains the generator alone (toggle_optimizer)
        critic.requires_grad_(False)

    def generator_step() -> None:
        out = module.generator(lr)
        _backward(objective.generator_loss(out, hr, critics, adversarial=bool(critics))[0])

    flops["generator_step"] = count_flops(generator_step)
    flops["iteration"] = flops.get("critic_step", 0) * n_critic + flops["generator_step"]
    return flops
