"""ddp_step_sync's bucketing (the 2-process behaviour is tests/test_ddp_train.py and benchmarks/bench_ddp_traffic.py)."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import StrategyRegistry

from dgggan_pl.strategies import STRATEGY_NAME, StepSyncDDPStrategy, _buckets


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
