"""The phases of the GPU check. Each takes the run's `Check` and its own spec (gpu_check.yaml) and returns its
figures; every training goes through `dgggan_pl.train.train` (or its CLI) with the project's config groups, and
every metric through `BenchmarkMetrics`, so the check measures the code that trains, not a copy of it.

A phase that reads the data folder declares what it reads (`Phase.needs`); the runner skips it, in one line
naming the first missing path, when this run's data folder lacks any of it (the one rule for missing data).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import multiprocessing.forkserver
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from dgggan_pl.config import compose_config
from dgggan_pl.metrics.keys import benchmark_key
from gpu_check import callbacks as check_callbacks
from gpu_check.data import training_dirs
from gpu_check.flops import iteration_flops

Figures = dict[str, Any]


# Training phases that measure training only: no validation, test or checkpoints.
NO_EVAL = [
    "++trainer.limit_val_batches=0",
    "data.val_sets=[]",
    "data.test_sets=[]",
    "callbacks.model_checkpoint=null",
]


@dataclass
class Check:
    """One run of the check: its settings (the `device` or `dry_run` profile), folders and device."""

    settings: DictConfig
    out: Path
    device: torch.device
    data_dir: Path | None
    data_spec: DictConfig
    dry_run: bool
    peak_tflops: float
    flops_per_iteration: float | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)

    def overrides(self, *extra: str, experiment: str = "full", folder: str = "run") -> list[str]:
        """Hydra overrides of one train() of the check: the profile's, the data folder, then `extra`."""
        data = [f"paths.data_dir={self.data_dir}"] if self.data_dir is not None else []
        crops = training_dirs(self.data_dir, self.data_spec) if self.data_dir is not None else []
        if crops:  # the carried training crops; else the embedded sample set (debug=smoke's, or data=sample)
            data += ["data=benchmark_train", f"data.train_source.hr_dirs=[{','.join(map(str, crops))}]"]
        else:
            data += ["data=sample", "data.val_sources={}", "data.test_sources={}"]
        workers = int(self.settings.workers)
        loader = [f"data.num_workers={workers}", f"data.persistent_workers={str(workers > 0).lower()}"]
        loader.append(f"data.pin_memory={str(self.device.type == 'cuda').lower()}")
        return [
            f"experiment={experiment}",
            *self.settings.train_overrides,
            *data,
            *loader,
            f"paths.output_dir={self.out / folder}",
            *extra,
        ]

    def compose(self, *extra: str, experiment: str = "full", folder: str = "run") -> DictConfig:
        return compose_config(self.overrides(*extra, experiment=experiment, folder=folder))


def _callback(name: str, target: str, **kwargs: Any) -> list[str]:
    """`+callbacks.<name>=...` overrides that make train() build one of the check's callbacks."""
    overrides = [f"+callbacks.{name}._target_={check_callbacks.__name__}.{target}"]
    return overrides + [f"+callbacks.{name}.{key}={value}" for key, value in kwargs.items()]


def _clock(check: Check, name: str, budget_s: float, warmup: int) -> tuple[Path, list[str]]:
    path = check.out / "records" / f"{name}.json"
    return path, _callback("phase_clock", "PhaseClock", path=path, budget_s=budget_s, warmup=warmup)


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for float32 matmuls and convolutions on or off (cuDNN's default is on), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def compile_stance(check: Check) -> Iterator[None]:
    """On the dry run torch.compile runs eagerly (`set_stance("force_eager")`): the plumbing, not inductor."""
    if not check.dry_run:
        yield
        return
    torch.compiler.set_stance("force_eager")
    try:
        yield
    finally:
        torch.compiler.set_stance("default")


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _read(path: Path) -> Figures:
    return json.loads(path.read_text()) if path.is_file() else {}


def _train(cfg: DictConfig) -> dict[str, float]:
    from dgggan_pl.train import train  # late: importing train registers resolvers and strategies

    return train(cfg)


# ---------------------------------------------------------------------------------------------- phases
def flops(check: Check, spec: DictConfig) -> Figures:
    """FLOPs of one experiment=full iteration at the throughput phases' batch and crop."""
    cfg = check.compose(folder="flops")
    counts = iteration_flops(cfg)
    check.flops_per_iteration = counts["iteration"]
    return {f"{key}_tflop": value / 1e12 for key, value in counts.items()} | {
        "batch": int(cfg.data.batch_size),
        "hr_patch": int(cfg.hr_patch_size),
    }


def throughput(check: Check, spec: DictConfig) -> Figures:
    """Iterations/s, achieved TFLOP/s and peak memory of experiment=full per precision variant."""
    if check.flops_per_iteration is None:  # `--only throughput`: the count takes seconds on the CPU
        check.flops_per_iteration = iteration_flops(check.compose(folder="flops"))["iteration"]
    figures: Figures = {}
    for name, variant in check.settings.throughput.variants.items():
        record, clock = _clock(check, f"throughput_{name}", variant.budget_s, spec.warmup)
        extra = [*clock, f"iterations={spec.iterations}", f"trainer.precision={variant.precision}"]
        extra += [*NO_EVAL, f"compile={str(variant.compile).lower()}"]
        if variant.channels_last:
            extra += _callback("channels_last", "ChannelsLast")
        _release_memory()  # the previous variant's module and optimizer states must not count in this peak
        try:
            with tf32(variant.tf32), compile_stance(check):
                _train(check.compose(*extra, folder=f"throughput_{name}"))
        except Exception as error:  # noqa: BLE001 - one variant failing (compile) must not hide the others
            figures[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            continue
        result = _read(record)
        rate = result.get("iterations_per_s")
        if rate and check.flops_per_iteration:
            result["achieved_tflops"] = rate * check.flops_per_iteration / 1e12
            result["fraction_of_peak"] = result["achieved_tflops"] / check.peak_tflops
        figures[name] = result
    # compile=true counts only if it compiles within its share; every eager variant must run
    figures["passed"] = all("error" not in r for n, r in figures.items() if n != "compile")
    return figures


def bf16_losses(check: Check, spec: DictConfig) -> Figures:
    """Every loss term of one batch in float32 (TF32 off) and under bf16 autocast, same weights and batch."""
    from dgggan_pl.train import build_module

    cfg = check.compose(folder="bf16_losses")
    torch.manual_seed(int(cfg.seed))
    module = build_module(cfg).to(check.device)
    module.objective.to(check.device)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    lr, hr = batch["lr"].to(check.device), batch["hr"].to(check.device)

    def losses(bf16: bool) -> dict[str, float]:
        noise = torch.Generator(device=check.device).manual_seed(int(cfg.seed))
        with torch.autocast(check.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = module.generator(lr)
            _, generator_stats = module.objective.generator_loss(out, hr, module.critics, adversarial=True)
            _, critic_stats = module.objective.critics_loss(out, hr, module.critics, noise)
        return {key: float(value) for key, value in {**generator_stats, **critic_stats}.items()}

    with tf32(False):
        fp32 = losses(False)
    bf16 = losses(True)
    relative = {k: abs(bf16[k] - fp32[k]) / max(abs(fp32[k]), 1e-12) for k in fp32}
    # Judged on what the optimizers minimise: eq. 7's sum and each critic's eq. 10. A single term can be far off
    # in relative terms and harmless: the untrained VGG19's features are ~1e-6, so its L1 is rounding noise, and
    # wdist is a difference of two near-equal means.
    totals = {k: v for k, v in relative.items() if k == "loss_g" or k.endswith("/loss_d")}
    worst = max(totals, key=totals.__getitem__)
    return {
        "fp32": fp32,
        "bf16": bf16,
        "relative_difference": relative,
        "max_relative_difference_of_totals": totals[worst],
        "worst_total": worst,
        "all_finite": all(map(_finite, bf16.values())),
        "passed": all(map(_finite, bf16.values())) and totals[worst] <= float(spec.max_relative_difference),
    }


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def host_syncs(check: Check, spec: DictConfig) -> Figures:
    """Host synchronisations per bf16 iteration (`torch.cuda.set_sync_debug_mode`); null on the CPU."""
    record = check.out / "records" / "host_syncs.json"
    _, clock = _clock(check, "host_syncs_clock", spec.budget_s, spec.warmup)
    extra = [*clock, *_callback("sync_counter", "SyncCounter", path=record, warmup=spec.warmup)]
    extra += [f"iterations={spec.iterations}", "trainer.precision=bf16-mixed", *NO_EVAL]
    _train(check.compose(*extra, folder="host_syncs"))
    return _read(record)


def ddp(check: Check, spec: DictConfig) -> Figures:
    """A 1-process trainer=ddp run (NCCL on a GPU, gloo on the CPU) of a few iterations."""
    record, clock = _clock(check, "ddp", spec.budget_s, 1)
    extra = [*spec.overrides, *clock, f"iterations={spec.iterations}", *NO_EVAL]
    try:
        _train(check.compose(*extra, folder="ddp"))
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    result = _read(record)
    result["passed"] = (
        result.get("process_group") == spec.backend and result.get("iterations") == spec.iterations
    )
    return result


def validation(check: Check, spec: DictConfig) -> Figures:
    """One benchmark image: the generator and BenchmarkMetrics on the device vs on the CPU."""
    from dgggan_pl.data.datasets import BenchmarkDataset
    from dgggan_pl.methods import bicubic_upscaler

    niqe = check.data_dir / "iqa-models" / "niqe_release" / "modelparameters.mat" if check.data_dir else None
    extra = ["metrics.benchmark.metrics=[psnr,ssim,niqe]", f"metrics.niqe_search_paths=[{niqe or ''}]"]
    cfg = check.compose(*extra, folder="validation")
    dataset = BenchmarkDataset(Path(cfg.paths.benchmark_dir) / spec.set, scale=int(cfg.scale))
    item = dataset[next(i for i, path in enumerate(dataset.hr_paths) if path.stem == spec.image)]
    lr, hr = cast(Tensor, item["lr"])[None], cast(Tensor, item["hr"])[None]
    torch.manual_seed(int(cfg.seed))
    generator = instantiate(cfg.model.generator).eval()
    with torch.no_grad(), tf32(False):
        sr_cpu = generator(lr).sr.clamp(0, 1)
        sr_device = generator.to(check.device)(lr.to(check.device)).sr.clamp(0, 1).cpu()
    figures: Figures = {"generator_max_abs_difference": float((sr_cpu - sr_device).abs().max())}
    bicubic = bicubic_upscaler(int(cfg.scale))(lr).clamp(0, 1)  # a realistic SR image, the same on both sides
    scores = {}
    for device in (torch.device("cpu"), check.device):
        metrics = instantiate(cfg.metrics.benchmark)().to(device)
        metrics.update(bicubic.to(device), hr.to(device), [spec.image])
        scores[device.type] = metrics.compute()
        figures["unavailable"] = dict(metrics.unavailable)
    cpu, other = scores["cpu"], scores[check.device.type]
    figures |= {f"{key}_cpu": cpu[key] for key in cpu}
    figures |= {f"{key}_difference": abs(other[key] - cpu[key]) for key in cpu}
    limits = {"psnr": spec.max_psnr_difference_db, "ssim": spec.max_ssim_difference}
    limits["niqe"] = spec.max_niqe_difference
    figures["passed"] = all(figures[f"{k}_difference"] <= float(v) for k, v in limits.items() if k in cpu)
    return figures


def upscale(check: Check, spec: DictConfig) -> Figures:
    """`python -m dgggan_pl.upscale` on `spec.image` (DIV2K 0853 LR), float32 vs --half: wall time, max difference."""
    from dgggan_pl.data.io import read_image
    from dgggan_pl.upscale import main as upscale_main
    from dgggan_pl.weights import save_generator_safetensors

    assert check.data_dir is not None  # Phase.needs: the runner skips this phase without it
    image = check.data_dir / spec.image
    cfg = check.compose(folder="upscale")
    weights = check.checkpoints.get("learning_curve")
    if weights is None:  # an untrained experiment=full generator: the same time, another picture
        torch.manual_seed(int(cfg.seed))
        weights = check.out / "upscale" / "generator.safetensors"
        save_generator_safetensors(instantiate(cfg.model.generator), cfg.model.generator, weights)
    runs = {"fp32": [], **({spec.half: ["--half", str(spec.half)]} if spec.half else {})}
    figures: Figures = {"weights": str(weights), "input": str(image)}
    outputs = {}
    for name, extra in runs.items():
        outputs[name] = check.out / "upscale" / f"0853_{name}.png"
        args = [str(image), str(outputs[name]), "--weights", str(weights), "--device", check.device.type]
        args += ["--tile", str(spec.tile)]
        for attempt in ("first", "second")[: int(spec.runs)]:  # the second run: cuDNN's plans, allocator warm
            start = time.perf_counter()
            status = upscale_main([*args, *extra, "--overwrite"])
            figures[f"{name}_{attempt}_s"] = time.perf_counter() - start
            if status != 0:
                raise RuntimeError(f"upscale {name} exited with status {status}")
    if spec.half:
        fp32, half = (read_image(outputs[name]).float() for name in ("fp32", spec.half))
        figures["max_difference_8bit"] = float((fp32 - half).abs().max() * 255)
        figures["mean_difference_8bit"] = float((fp32 - half).abs().mean() * 255)
    else:
        figures["half"] = "n/a: --half runs on a GPU only"
    return figures


def learning_curve(check: Check, spec: DictConfig) -> Figures:
    """PSNR stage on the carried BSD100 + Urban100 crops, Set5/Set14 PSNR every few hundred iterations."""
    history = check.out / "records" / "learning_curve_history.json"
    record, clock = _clock(check, "learning_curve", spec.budget_s, 1)
    extra = [*clock, f"iterations={spec.iterations}", f"trainer.precision={spec.precision}"]
    extra += [f"optim.generator.lr={spec.lr}", "optim.scheduler.milestones=[1000000000]"]
    extra += [f"trainer.val_check_interval={spec.val_every}", "metrics.benchmark.metrics=[psnr,ssim]"]
    extra += [
        f"callbacks.model_checkpoint.monitor={benchmark_key('val', 'Set14', 'psnr')}",
        "data.test_sets=[]",
    ]
    extra += ["+callbacks.history._target_=dgggan_pl.callbacks.metric_history.MetricHistory"]
    extra += [f"+callbacks.history.path={history}"]
    cfg = check.compose(*extra, experiment="pretrain", folder="learning_curve")
    _train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        check.checkpoints["learning_curve"] = last
    result = _read(record)
    curve = _read(history) if history.is_file() else []
    bicubic = bicubic_psnr(cfg)
    return {
        "train_seconds": result.get("fit_seconds"),
        "iterations": result.get("iterations"),
        "iterations_per_s": result.get("iterations_per_s"),
        "bicubic": bicubic,
        "curve": curve,
        "passed": (result.get("fit_seconds") or 0) >= float(spec.min_train_s) and bool(curve),
    }


def bicubic_psnr(cfg: DictConfig) -> dict[str, float]:
    """MATLAB bicubic of the shipped LR on each validation set, scored like the model (the reference line)."""
    from dgggan_pl.data.datasets import BenchmarkDataset
    from dgggan_pl.evaluate import evaluate_set
    from dgggan_pl.methods import Method, bicubic_upscaler

    method = Method("bicubic", "MATLAB bicubic", upscale=bicubic_upscaler(int(cfg.scale)))
    scores = {}
    for name in cfg.data.val_sets:
        dataset = BenchmarkDataset(Path(cfg.paths.benchmark_dir) / name, scale=int(cfg.scale))
        metrics = instantiate(cfg.metrics.benchmark)()
        scores[name] = evaluate_set(method, dataset, metrics, torch.device("cpu")).values["psnr"]
    return scores


def train_resume(check: Check, spec: DictConfig) -> Figures:
    """`python -m dgggan_pl.train` that validates and saves, is killed (SIGKILL) mid-run, then `resume=` it."""
    run_dir = check.out / "train_resume"
    base = check.overrides(
        *spec.overrides, "logger=csv", f"iterations={spec.iterations}", folder="train_resume"
    )
    base = [o for o in base if not o.startswith("paths.output_dir=")]
    base.append("callbacks.model_checkpoint.if_none_available=latest")  # no PI/LPIPS here; NIQE if carried
    last = run_dir / "checkpoints" / "last.ckpt"
    kill = _callback("kill", "KillAfterCheckpoint", checkpoint=last, iteration=spec.kill_at)
    deadline = time.perf_counter() + float(spec.budget_s)
    killed = _train_process([*base, *kill, f"hydra.run.dir={run_dir}"], deadline)
    figures: Figures = {
        "killed_returncode": killed,
        "iteration_of_last_ckpt_at_kill": _checkpoint_iteration(last),
    }
    resumed = _train_process([*base, f"resume={run_dir}"], deadline)
    info = _read(run_dir / "run_info.json")
    figures |= {"resumed_returncode": resumed, "final_iteration": _checkpoint_iteration(last)}
    figures["run_status"] = info.get("status")
    figures["test_metrics"] = {k: v for k, v in (info.get("metrics") or {}).items() if k.startswith("test/")}
    figures["passed"] = (
        killed == -signal.SIGKILL
        and resumed == 0
        and figures["final_iteration"] == spec.iterations
        and info.get("status") == "completed"
    )
    return figures


def start_train_server() -> None:
    """Start the fork server of `_train_process` now, so that its imports overlap the phases before train_resume."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(["dgggan_pl.train"])
    multiprocessing.forkserver.ensure_running()


def _train_process(overrides: list[str], deadline: float) -> int:
    """`python -m dgggan_pl.train OVERRIDES`'s entry point in a fresh process; its exit code (-N: signal N).

    The process is forked from a fork server that imported `dgggan_pl.train` once (the second run starts without
    importing torch again) and that never touched CUDA, so the child may use the GPU.
    """
    start_train_server()
    process = multiprocessing.get_context("forkserver").Process(target=_train_main, args=(overrides,))
    process.start()
    process.join(max(deadline - time.perf_counter(), 1.0))
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"train {' '.join(overrides)} did not end within the phase budget")
    return int(process.exitcode)


def _train_main(overrides: list[str]) -> None:
    from dgggan_pl.train import main as train_main

    sys.argv = ["dgggan_pl.train", *overrides]
    train_main()


def _checkpoint_iteration(path: Path) -> int | None:
    from dgggan_pl.methods import checkpoint_info

    return checkpoint_info(path)[0] if path.is_file() else None


# ---------------------------------------------------------------------------------------------- data needs
def benchmark_set(name: str, scale: int = 4) -> list[str]:
    """The folders of one benchmark set in a data folder: its HR and shipped LR images."""
    return [f"sr-benchmarks/{name}/HR", f"sr-benchmarks/{name}/LR_bicubic/X{scale}"]


def validation_needs(check: Check, spec: DictConfig) -> list[str]:
    return benchmark_set(spec.set)


def upscale_needs(check: Check, spec: DictConfig) -> list[str]:
    return [str(spec.image)]


def learning_curve_needs(check: Check, spec: DictConfig) -> list[str]:
    """The training HR folders (prepared crops, else the whole sets) and the sets it validates on."""
    data_dir = check.data_dir
    found = training_dirs(data_dir, check.data_spec) if data_dir is not None else []
    train = [str(folder.relative_to(data_dir)) for folder in found] if data_dir is not None else []
    whole = [f"sr-benchmarks/{name}/HR" for name in check.data_spec.train_sets]
    return (train or whole) + [path for name in check.data_spec.eval_sets for path in benchmark_set(name)]


def no_data(check: Check, spec: DictConfig) -> list[str]:
    """The phases that train on the embedded sample images when there is no data folder."""
    return []


@dataclass(frozen=True)
class Phase:
    """A phase's code and the data-folder paths (relative) it reads; `needs` returns none for a phase that runs
    without a data folder."""

    run: Callable[[Check, DictConfig], Figures]
    needs: Callable[[Check, DictConfig], list[str]] = no_data


def missing_data(check: Check, phase: Phase, spec: DictConfig) -> str | None:
    """Why `phase` cannot run with this run's data folder, in one line (the first path it lacks), or None."""
    needed = phase.needs(check, spec)
    hint = "pass --data DIR (a data folder with sr-benchmarks/), or fill .gpu_data/ with --prepare-data"
    if needed and check.data_dir is None:
        return f"needs {needed[0]} of a data folder and this run has none: {hint}"
    data_dir = check.data_dir
    missing = [path for path in needed if data_dir is not None and not (data_dir / path).exists()]
    if missing:
        return f"needs {missing[0]}, which the data folder {data_dir} lacks: {hint}"
    return None


# In this order: the learning curve before upscale (which upscales with its weights), the longest phases where a
# total budget that runs short skips the least.
PHASES: dict[str, Phase] = {
    "flops": Phase(flops),
    "throughput": Phase(throughput),
    "bf16_losses": Phase(bf16_losses),
    "host_syncs": Phase(host_syncs),
    "validation": Phase(validation, validation_needs),
    "ddp": Phase(ddp),
    "learning_curve": Phase(learning_curve, learning_curve_needs),
    "upscale": Phase(upscale, upscale_needs),
    "train_resume": Phase(train_resume),
}
