"""Gradient elements all-reduced per backward under DDP: Lightning's DDP wrapper vs `strategy=ddp_step_sync`.

Runs the same 2-process CPU (gloo) job twice, `experiment=full debug=smoke trainer=ddp_cpu` (tiny networks,
both critics), once per strategy, each with a counting subclass:
- before: `ddp_find_unused_parameters_true` (one DistributedDataParallel over the whole LightningModule),
  counted by a DDP communication hook that adds up the buckets it all-reduces;
- after: `ddp_step_sync` (no wrapper; each optimizer step averages its own gradients), counted per bucket.
Counts are attributed to the optimizer step that follows the backward (generator or critics) and written per
rank; the table compares them side by side, and checks that both runs end with rank-identical weights.
Usage: python benchmarks/bench_ddp_traffic.py [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from dgggan_pl.launch.commands import clean_env
from dgggan_pl.strategies import StepSyncDDPStrategy
from record import write_result

BENCH_DIR = Path(__file__).resolve().parent
OUT_ENV = "DGGGAN_TRAFFIC_OUT"
STEP_KINDS = ("generator", "critics")  # DGGGANModule's optimizers, in order


class _Counter:
    """Elements all-reduced since the last optimizer step, recorded per step as (kind, elements)."""

    def _init_counter(self) -> None:
        self.pending = 0
        self.steps: list[tuple[str, int]] = []

    def _record(self, optimizer) -> None:  # noqa: ANN001
        index = self.optimizers.index(optimizer)
        self.steps.append((STEP_KINDS[index], self.pending))
        self.pending = 0

    def _write(self) -> None:
        out = os.environ.get(OUT_ENV)
        if out:
            path = Path(out) / f"rank{self.global_rank}.json"
            path.write_text(json.dumps({"steps": self.steps}))


def counting_allreduce(state, bucket):  # noqa: ANN001, ANN201 (DDP rejects string annotations)
    """DDP's default all-reduce hook, adding the bucket's element count to `state.pending` first."""
    state.pending += bucket.buffer().numel()
    return default_hooks.allreduce_hook(None, bucket)


class CountingFindUnusedDDP(_Counter, DDPStrategy):
    """Before: Lightning's DDP with find_unused_parameters=True, counted by a comm hook."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(find_unused_parameters=True, **kwargs)
        self._init_counter()

    def configure_ddp(self) -> None:
        super().configure_ddp()
        self.model.register_comm_hook(self, counting_allreduce)  # Lightning registers hooks on CUDA only

    def optimizer_step(self, optimizer, closure, model=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self._record(optimizer)
        return super().optimizer_step(optimizer, closure, model, **kwargs)

    def teardown(self) -> None:
        self._write()
        super().teardown()


class CountingStepSync(_Counter, StepSyncDDPStrategy):
    """After: ddp_step_sync, counted per all-reduced bucket."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self._init_counter()

    def all_reduce_bucket(self, grads) -> None:  # noqa: ANN001
        self.pending += sum(grad.numel() for grad in grads)
        super().all_reduce_bucket(grads)

    def optimizer_step(self, optimizer, closure, model=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        output = super().optimizer_step(optimizer, closure, model, **kwargs)  # reduces, then steps
        self._record(optimizer)
        return output

    def teardown(self) -> None:
        self._write()
        super().teardown()


def run(name: str, strategy: str, workdir: Path, iterations: int) -> dict:
    out = workdir / name
    out.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "dgggan_pl.train",
        "experiment=full",
        "debug=smoke",
        "trainer=ddp_cpu",
        f"trainer.strategy={{_target_:bench_ddp_traffic.{strategy}}}",
        f"iterations={iterations}",
        "logger=none",
        "metrics.lpips=disabled",
        "callbacks.image_panels=null",
        "data.test_sets=[]",
        "data.test_sources={}",
        f"hydra.run.dir={out / 'run'}",
    ]
    env = {
        **clean_env(os.environ),  # no process-group layout leaks in from the caller
        OUT_ENV: str(out),
        "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{result.stderr[-3000:]}")
    counts = [json.loads((out / f"rank{r}.json").read_text())["steps"] for r in (0, 1)]
    weights = [json.loads((out / "run" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    identical = weights[0]["final_weights_sha256"] == weights[1]["final_weights_sha256"]
    return {"steps": counts[0], "ranks_agree": counts[0] == counts[1], "identical_weights": identical}


def per_kind(steps: list[list]) -> dict[str, float]:
    return {kind: mean(n for k, n in steps if k == kind) for kind in STEP_KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = run("before", "CountingFindUnusedDDP", Path(tmp), args.iterations)
        after = run("after", "CountingStepSync", Path(tmp), args.iterations)
    b, a = per_kind(before["steps"]), per_kind(after["steps"])
    total_b = sum(n for _, n in before["steps"])
    total_a = sum(n for _, n in after["steps"])
    print(
        f"2 gloo processes, experiment=full debug=smoke, {args.iterations} iterations, {len(after['steps'])} steps"
    )
    print(
        "| elements all-reduced per backward | ddp_find_unused_parameters_true | ddp_step_sync | after / before |"
    )
    print("|---|---|---|---|")
    for kind in STEP_KINDS:
        print(f"| {kind} step | {b[kind]:,.0f} | {a[kind]:,.0f} | {a[kind] / b[kind]:.3f} |")
    print(f"| whole run | {total_b:,} | {total_a:,} | {total_a / total_b:.3f} |")
    for name, result in (("before", before), ("after", after)):
        print(
            f"{name}: ranks counted the same: {result['ranks_agree']}; "
            f"rank-identical final weights: {result['identical_weights']}"
        )
    write_result(
        "ddp_traffic",
        {
            "iterations": args.iterations,
            "elements_per_backward": {
                f"{kind}_step": {"before": b[kind], "after": a[kind], "after_per_before": a[kind] / b[kind]}
                for kind in STEP_KINDS
            },
            "whole_run": {"before": total_b, "after": total_a, "after_per_before": total_a / total_b},
            **{
                name: {"ranks_agree": r["ranks_agree"], "identical_weights": r["identical_weights"]}
                for name, r in (("before", before), ("after", after))
            },
        },
        title="DDP traffic: elements all-reduced per backward",
        notes="2 gloo processes, experiment=full debug=smoke; before = ddp_find_unused_parameters_true, after = "
        "our ddp_step_sync (docs/sweeps.md, docs/design.md#ddp-strategy).",
    )


if __name__ == "__main__":
    main()
