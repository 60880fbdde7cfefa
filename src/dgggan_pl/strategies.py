"""Multi-process training that all-reduces only what each optimizer step trains (docs/design.md#ddp-strategy).

Lightning's DDP wraps the whole LightningModule in one DistributedDataParallel. With manual optimization and
networks frozen per step (`toggle_optimizer`), it needs `find_unused_parameters=True`, and then every backward
all-reduces every bucket: generator and both critics, about twice the traffic the steps need.

`StepSyncDDPStrategy` (registered as `strategy=ddp_step_sync`) keeps Lightning's DDP process launch, process
group, samplers and collectives, but no DistributedDataParallel wrapper: the module's states are broadcast from
rank 0 once at start, and `optimizer.step()` first averages across ranks the gradients of exactly the
parameters that optimizer updates (the generator's for the generator step, the critics' for a critic step).
Ranks therefore take identical steps and keep identical weights, as under DDP. Trade-off: the all-reduce runs
after the backward instead of overlapping with it, in buckets of `bucket_mb`. Manual optimization only
(`DGGGANModule`): with automatic optimization the closure would run the backward after the reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.optim import Optimizer

STRATEGY_NAME = "ddp_step_sync"
DEFAULT_BUCKET_MB = 25.0  # DistributedDataParallel's default bucket_cap_mb


class StepSyncDDPStrategy(DDPStrategy):
    """DDP processes without the DistributedDataParallel wrapper; each optimizer step averages its own gradients."""

    def __init__(self, *args: Any, bucket_mb: float = DEFAULT_BUCKET_MB, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bucket_bytes = int(bucket_mb * 1024 * 1024)

    def setup(self, trainer: Trainer) -> None:
        module = trainer.lightning_module
        if module is not None and module.automatic_optimization:
            raise ValueError(
                f"trainer.strategy={STRATEGY_NAME} reduces gradients in optimizer.step() and needs manual "
                "optimization; use trainer.strategy=ddp for automatic optimization"
            )
        super().setup(trainer)

    def configure_ddp(self) -> None:
        """No wrapper: start every rank from rank 0's parameters and buffers (what the wrapper would do)."""
        assert isinstance(self.model, LightningModule)
        if dist.is_available() and dist.is_initialized():
            _sync_module_states(self.model)

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Any = None,
        **kwargs: Any,
    ) -> Any:
        self.reduce_gradients(optimizer)
        return super().optimizer_step(optimizer, closure, model, **kwargs)

    def reduce_gradients(self, optimizer: Optimizer) -> None:
        """Average over ranks the gradients of `optimizer`'s trainable parameters, bucket by bucket.

        The layout is the same on every rank by construction: every parameter of the optimizer that requires
        a gradient takes part, in the optimizer's order, and one without a gradient on this rank (a term that
        did not run here) contributes zeros, as under DistributedDataParallel. Leaving it out instead would
        make the buckets differ between ranks: a hang on NCCL, or gradients added onto the wrong parameters.
        Unlike DistributedDataParallel, a parameter that no rank used also gets a zero gradient (so Adam
        still moves it by its momentum); the DGGGAN objective uses every parameter it optimizes at each step.
        """
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return
        for bucket in _buckets(step_gradients(optimizer), self.bucket_bytes):
            self.all_reduce_bucket(bucket)

    def all_reduce_bucket(self, grads: list[Tensor]) -> None:
        """One all-reduce for a bucket of gradients (same dtype and device), averaged in place."""
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(reduced)


def step_gradients(optimizer: Optimizer) -> list[Tensor]:
    """The gradient of every parameter of `optimizer` that requires one, in order; a missing one is zero-filled."""
    grads = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not param.requires_grad:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
    return grads


def _buckets(grads: list[Tensor], bucket_bytes: int) -> list[list[Tensor]]:
    """Consecutive gradients grouped up to `bucket_bytes`, never mixing dtypes or devices."""
    buckets: list[list[Tensor]] = []
    size = 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        last = buckets[-1] if buckets else None
        same_kind = last is not None and (last[0].dtype, last[0].device) == (grad.dtype, grad.device)
        if last is None or not same_kind or size + nbytes > bucket_bytes:
            buckets.append([grad])
            size = nbytes
        else:
            last.append(grad)
            size += nbytes
    return buckets


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(
        STRATEGY_NAME,
        StepSyncDDPStrategy,
        description="DDP without a wrapper: each optimizer step all-reduces only its own gradients",
        start_method="popen",
    )
