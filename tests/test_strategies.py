"""ddp_step_sync's bucketing (the 2-process behaviour is tests/test_ddp_train.py and benchmarks/bench_ddp_traffic.py)."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import StrategyRegistry

from dgggan_pl.strategies import STRATEGY_NAME, StepSyncDDPStrategy, _buckets, step_gradients


def test_buckets_respect_the_size_cap_and_never_mix_dtypes() -> None:
    grads = [
        torch.zeros(10),
        torch.zeros(10),
        torch.zeros(30),
        torch.zeros(5, dtype=torch.float64),
        torch.zeros(1),
    ]
    buckets = _buckets(grads, bucket_bytes=100)  # 25 float32 elements
    assert [[g.numel() for g in bucket] for bucket in buckets] == [[10, 10], [30], [5], [1]]
    assert [g for bucket in buckets for g in bucket] == grads  # order kept, nothing dropped


def test_the_strategy_is_registered_by_name() -> None:
    assert STRATEGY_NAME in StrategyRegistry
    assert StrategyRegistry[STRATEGY_NAME]["strategy"] is StepSyncDDPStrategy


def test_every_rank_reduces_the_same_gradient_layout_whatever_ran_on_it() -> None:
    """A parameter without a gradient on one rank (a term that did not run there) is zero-filled, not left
    out, so both ranks all-reduce the same buckets; frozen parameters are left out on every rank."""
    torch.manual_seed(0)
    layouts = []
    for rank_used_head in (True, False):
        trunk, head, frozen = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2), torch.nn.Linear(4, 1)
        frozen.requires_grad_(False)
        optimizer = torch.optim.Adam([*trunk.parameters(), *head.parameters(), *frozen.parameters()])
        x = trunk(torch.rand(3, 4))
        loss = (head(x).sum() if rank_used_head else 0) + x.sum()
        loss.backward()
        grads = step_gradients(optimizer)
        shapes = [(tuple(g.shape), g.dtype) for g in grads]
        layouts.append((shapes, [len(bucket) for bucket in _buckets(grads, bucket_bytes=40)]))
        if not rank_used_head:
            assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in head.parameters())
        assert all(p.grad is None for p in frozen.parameters())
    float32 = torch.float32
    expected_shapes = [((4, 4), float32), ((4,), float32), ((2, 4), float32), ((2,), float32)]
    assert layouts[0] == layouts[1] == (expected_shapes, [1, 1, 2])
