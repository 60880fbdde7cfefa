"""Lightning's overhead: per-iteration time of DGGGANModule under the Trainer vs a plain PyTorch loop.

Both sides run experiment=full's updates (critic step with gradient penalty on both critics, then the eq. 7
generator step, schedulers) with dgggan_lite at batch 4 on CPU, on the same in-memory batches, from the same
initial weights; the plain loop calls the module's own objective functions, so the only difference is the
orchestration (Trainer loop, toggle_optimizer, manual_backward, logging, the non-finite check). Runs alternate
(Lightning, plain, Lightning, plain, ...) and the medians of the per-iteration wall times are compared.
Goal: overhead <= 3%.   Usage: python benchmarks/bench_module_overhead.py [--iterations 8 --hr-patch 96]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from dgggan_pl.config import compose_config
from dgggan_pl.module import DGGGANModule
from dgggan_pl.train import build_module, derive_max_steps
from record import write_result

OVERHEAD_GOAL_PERCENT = 3.0  # Lightning may cost at most this much per iteration over a plain loop


class StepClock(Callback):
    """Wall time between consecutive batch starts: the whole loop, data fetching and logging included."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())


def make_batches(count: int, batch: int, hr_patch: int, scale: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    hrs = [torch.rand(batch, 3, hr_patch, hr_patch, generator=generator) for _ in range(count)]
    return [{"lr": torch.nn.functional.avg_pool2d(hr, scale), "hr": hr} for hr in hrs]


def lightning_run(cfg, batches) -> tuple[list[float], DGGGANModule]:
    seed_everything(0, verbose=False)
    module, clock = build_module(cfg), StepClock()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=derive_max_steps(cfg),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)], module


def plain_run(cfg, batches) -> tuple[list[float], DGGGANModule]:
    seed_everything(0, verbose=False)
    module = build_module(cfg)  # same initial weights; used here as a bag of networks and loss functions
    (opt_g, opt_d), schedulers = module.configure_optimizers()
    module.train()
    critics, times = list(module.critics.values()), []
    start = time.perf_counter()
    for batch in DataLoader(batches, batch_size=None):
        lr, hr = batch["lr"], batch["hr"]
        out = module.generator(lr)
        for update in range(cfg.optim.n_critic):
            module.generator.requires_grad_(False)
            loss_d, _ = module._critic_objective(out, hr, module._noise_generator(hr.device, update))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            module.generator.requires_grad_(True)
        for critic in critics:
            critic.requires_grad_(False)
        loss_g, _ = module._generator_objective(out, hr)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for critic in critics:
            critic.requires_grad_(True)
        for scheduler in schedulers:
            scheduler.step()
        module.iteration += 1
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times, module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first iterations of each run not timed")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side")
    parser.add_argument(
        "--hr-patch", type=int, default=96, help="HR crop (the paper's 192 is 4x slower on CPU)"
    )
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    cfg = compose_config(
        [
            "experiment=full",
            "model=dgggan_lite",
            "loss.terms.percept.loss.weights=random",  # same cost as the ImageNet weights, none needed
            f"hr_patch_size={args.hr_patch}",
            f"iterations={args.iterations}",
            "metrics.lpips=disabled",
        ]
    )
    batches = make_batches(args.iterations, args.batch, args.hr_patch, cfg.scale)
    timings: dict[str, list[float]] = {"lightning": [], "plain": []}
    identical: list[bool] = []
    for repeat in range(args.repeats):
        for name, run in (("lightning", lightning_run), ("plain", plain_run)):
            times, module = run(cfg, batches)
            timings[name] += times[args.warmup :]
            print(
                f"repeat {repeat} {name}: median {statistics.median(times[args.warmup :]):.3f} s/iteration",
                flush=True,
            )
            if name == "lightning":
                reference = {k: v.clone() for k, v in module.state_dict().items()}
            else:
                same = all(torch.equal(reference[k], v) for k, v in module.state_dict().items())
                identical.append(same)
                print(f"repeat {repeat}: final weights identical to the Lightning run: {same}", flush=True)
    lightning, plain = (statistics.median(timings[k]) for k in ("lightning", "plain"))
    print(
        f"dgggan_lite batch {args.batch}, HR {args.hr_patch}, CPU x{torch.get_num_threads()} threads: "
        f"Lightning {lightning:.3f} s/it, plain {plain:.3f} s/it, overhead {100 * (lightning / plain - 1):+.1f}% (goal <= 3%)"
    )
    write_result(
        "module_overhead",
        {
            "lightning_seconds_per_iteration": lightning,
            "plain_loop_seconds_per_iteration": plain,
            "overhead_percent": 100 * (lightning / plain - 1),
            "goal_percent": OVERHEAD_GOAL_PERCENT,
            "weights_bit_identical": all(identical),
        },
        title="Lightning overhead per iteration",
        notes=f"dgggan_lite, batch {args.batch}, HR {args.hr_patch}, experiment=full's updates, {args.repeats} "
        f"alternating repeats of {args.iterations - args.warmup} timed iterations; medians.",
    )


if __name__ == "__main__":
    main()
