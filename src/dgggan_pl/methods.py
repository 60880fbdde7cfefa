"""The rows of the evaluation tables, figures and comparison page: one `Method` per entry of `models`.

An entry is `bicubic` (MATLAB bicubic of the LR input), a generator file (`.ckpt` / `.safetensors` / a
`save_pretrained` folder), `spandrel:<Label>=<weights file>`: a peer model (ESRGAN, RCAN, SwinIR, ...) built from
its released weights by spandrel (`dgggan_pl.peers`; a bare `.pth` path is read the same way), each loaded as an
`SRModel` (`dgggan_pl.sr_model`), or
`results:<Label>=<folder>`: another method's published SR images,
laid out `<folder>/<Set>/<name>.png` and matched by name to the benchmark HR (common suffixes such as `_x4`
or `_SR` are stripped). A results folder is checked completely before anything is scored: a missing image,
a size other than the HR's or a file that matches no HR image is an error naming the file, so a method is
never scored on a subset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from dgggan_pl.data.datasets import BenchmarkDataset
from dgggan_pl.data.imresize import imresize
from dgggan_pl.data.io import IMAGE_EXTENSIONS, read_image, to_float
from dgggan_pl.metrics.fidelity import PIXEL_MAX, matlab_round
from dgggan_pl.peers import is_peer_file
from dgggan_pl.sr_model import SRModel

BICUBIC = "bicubic"
RESULTS_PREFIX = "results:"
PEER_PREFIX = "spandrel:"
CKPT_STATE_KEY = "dgggan"  # DGGGANModule's own checkpoint entry (iteration counter)
Upscaler = Callable[[Tensor], Tensor]  # (1, 3, h, w) in [0, 1] -> (1, 3, s*h, s*w) in [0, 1]


class MethodError(ValueError):
    """A `models` entry cannot be used; the message has one line per problem, each naming the file."""


@dataclass
class Method:
    """One row: `label` (table name), `source` (what produced it: file, iteration, weights) and how to get
    the SR image of a benchmark item. `generator` is the `SRModel` of a weights row (figures use its gradient map)."""

    label: str
    source: str
    upscale: Upscaler | None = None
    results: dict[str, dict[str, Path]] = field(default_factory=dict)  # set -> image name -> SR file
    generator: SRModel | None = None

    def sr(self, set_name: str, item: Mapping, device: torch.device) -> Tensor:
        """`(1, 3, H, W)` float in [0, 1] on `device` for a `BenchmarkDataset` item."""
        if self.upscale is not None:
            return self.upscale(item["lr"][None].to(device)).to(device)
        return to_float(read_image(self.results[set_name][item["name"]]))[None].to(device)


def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB `imresize(lr_uint8, scale, 'bicubic')` of the 8-bit LR image (the literature's bicubic row)."""

    def upscale(lr: Tensor) -> Tensor:
        lr_uint8 = matlab_round(lr.clamp(0, 1) * PIXEL_MAX).to(torch.uint8)
        return imresize(lr_uint8, scale=scale).to(torch.float32) / PIXEL_MAX

    return upscale


def checkpoint_info(path: Path) -> tuple[int | None, bool]:
    """`(iteration, has EMA weights)` of a training `.ckpt` (iteration None when it was not recorded)."""
    from dgggan_pl.weights import EMA_PREFIX, WeightsError

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - unreadable or unsafe: load_generator gives the full reason
        raise WeightsError(f"{path}: not a readable training checkpoint ({type(error).__name__})") from None
    state = checkpoint.get(CKPT_STATE_KEY) or {}
    iteration = state.get("iteration", checkpoint.get("global_step"))
    has_ema = any(k.startswith(EMA_PREFIX) for k in checkpoint.get("state_dict", {}))
    return (None if iteration is None else int(iteration)), has_ema


def checkpoint_source(path: Path, use_ema: bool | None) -> str:
    """`"<file>, iteration N, EMA"`: which checkpoint a row comes from (iteration from a training .ckpt)."""
    parts = [str(path)]
    if path.suffix.lower() == ".ckpt":
        iteration, has_ema = checkpoint_info(path)
        if iteration is not None:
            parts.append(f"iteration {iteration}")
        parts.append("EMA" if (has_ema if use_ema is None else use_ema) else "raw weights")
    return ", ".join(parts)


def model_upscaler(model: SRModel, device: torch.device) -> Upscaler:
    """`model.upscale(lr)` (the whole image) on `device`, clamped and left unrounded: the metrics round it (one
    protocol for all rows)."""

    def upscale(lr: Tensor) -> Tensor:
        return model.upscale(lr.to(device)).clamp(0, 1)

    return upscale


def model_method(label: str, path: Path, use_ema: bool | None, device: torch.device, scale: int) -> Method:
    """The generator stored at `path` (ours or a peer's), in eval mode on `device`."""
    model = SRModel.from_pretrained(path, use_ema=use_ema, map_location=device)
    if model.scale != scale:
        raise MethodError(f"{path}: generator scale is x{model.scale} but the config has scale={scale}")
    source = checkpoint_source(path, use_ema) if path.suffix.lower() == ".ckpt" else model.source
    return Method(label, source, upscale=model_upscaler(model, device), generator=model)


def benchmark_name(file: Path, suffixes: Sequence[str]) -> str:
    """The benchmark image name of a result file: its stem without the longest matching known suffix."""
    stem = file.stem
    for suffix in sorted(suffixes, key=len, reverse=True):
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def match_results(
    label: str, folder: Path, datasets: Mapping[str, BenchmarkDataset], suffixes: Sequence[str]
) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """`(set -> name -> file, problems)`: every HR image needs exactly one SR file of the HR size."""
    matched: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
    where = f"results:{label}"
    if not folder.is_dir():
        return matched, [f"{where}: folder {folder} not found (layout <folder>/<Set>/<name>.png)"]
    for set_name, dataset in datasets.items():
        set_dir = folder / set_name
        if not set_dir.is_dir():
            problems.append(
                f"{where}: {set_dir} is missing; add the {set_name} results or drop {set_name} from sets"
            )
            continue
        hr_sizes = {p.stem: _mod_size(p, dataset.scale) for p in dataset.hr_paths}
        found: dict[str, Path] = {}
        for file in sorted(p for p in set_dir.iterdir() if not p.name.startswith(".")):
            name = benchmark_name(file, suffixes)
            if file.suffix.lower() not in IMAGE_EXTENSIONS or name not in hr_sizes:
                problems.append(
                    f"{where}: {file} matches no {set_name} HR image (names: {_sample(hr_sizes)})"
                )
            elif name in found:
                problems.append(f"{where}: {file} and {found[name]} are both {set_name}/{name}; keep one")
            else:
                found[name] = file
                size = Image.open(file).size
                if size != hr_sizes[name]:
                    problems.append(
                        f"{where}: {file} is {size[0]}x{size[1]} but the HR {set_name}/{name} is "
                        f"{hr_sizes[name][0]}x{hr_sizes[name][1]}; results must be x{dataset.scale} of the LR"
                    )
        for name in sorted(set(hr_sizes) - set(found)):
            problems.append(f"{where}: no SR image for {set_name}/{name} in {set_dir} (e.g. {name}.png)")
        matched[set_name] = found
    return matched, problems


def _mod_size(path: Path, scale: int) -> tuple[int, int]:
    """(width, height) of an HR image after the mod-crop the benchmark applies."""
    width, height = Image.open(path).size
    return width - width % scale, height - height % scale


def _sample(names: Mapping[str, object], count: int = 3) -> str:
    shown = sorted(names)[:count]
    return ", ".join(shown) + (", ..." if len(names) > count else "")


def _parse_labelled_entry(entry: str, prefix: str, what: str, example: str) -> tuple[str, Path]:
    label, sep, target = entry[len(prefix) :].partition("=")
    if not sep or not label or not target:
        raise MethodError(
            f"models: {entry!r} must read {prefix}<Label>=<{what}> (quote it in a Hydra list: "
            f"'models=[bicubic,\"{prefix}{example}\"]')"
        )
    return label, Path(target).expanduser()


def parse_results_entry(entry: str) -> tuple[str, Path]:
    """`results:<Label>=<folder>` -> (label, folder)."""
    return _parse_labelled_entry(entry, RESULTS_PREFIX, "folder", "ESRGAN=path/to/ESRGAN")


def parse_peer_entry(entry: str) -> tuple[str, Path]:
    """`spandrel:<Label>=<weights file>` -> (label, file)."""
    return _parse_labelled_entry(entry, PEER_PREFIX, "weights file", "ESRGAN=weights/RRDB_ESRGAN_x4.pth")


def default_label(model: str) -> str:
    if model == BICUBIC:
        return "Bicubic"
    if model.startswith(RESULTS_PREFIX):
        return parse_results_entry(model)[0]
    if model.startswith(PEER_PREFIX):
        return parse_peer_entry(model)[0]
    path = Path(model)
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "checkpoints" else path.stem


def build_methods(
    models: Sequence[str],
    labels: Sequence[str] | None,
    datasets: Mapping[str, BenchmarkDataset],
    *,
    scale: int,
    use_ema: bool | None,
    device: torch.device,
    result_suffixes: Sequence[str],
) -> list[Method]:
    """Every row of `models`, results folders checked against `datasets` first (all problems in one error)."""
    if not models:
        raise MethodError(
            "models: give at least one of `bicubic`, a checkpoint path, spandrel:<Label>=<weights file> or "
            "results:<Label>=<folder>"
        )
    labels = list(labels) if labels is not None else [default_label(m) for m in models]
    if len(labels) != len(models) or len(set(labels)) != len(labels):
        raise MethodError(
            f"labels: need {len(models)} distinct names for models={list(models)}, got {labels}"
        )
    problems: list[str] = []
    folders: dict[str, dict[str, dict[str, Path]]] = {}
    for label, model in zip(labels, models, strict=True):
        if model.startswith(RESULTS_PREFIX):
            _, folder = parse_results_entry(model)
            folders[label], found = match_results(label, folder, datasets, result_suffixes)
            problems += found
        elif model.startswith(PEER_PREFIX):
            if not (file := parse_peer_entry(model)[1]).is_file():
                problems.append(f"models: {model}: weights file {file} not found")
        elif model != BICUBIC and not Path(model).is_file():
            problems.append(f"models: checkpoint {model} not found")
    if problems:
        raise MethodError("\n".join(problems))
    methods = []
    for label, model in zip(labels, models, strict=True):
        if model == BICUBIC:
            methods.append(Method(label, "MATLAB bicubic of the LR input", upscale=bicubic_upscaler(scale)))
        elif model.startswith(RESULTS_PREFIX):
            methods.append(
                Method(label, f"SR images in {parse_results_entry(model)[1]}", results=folders[label])
            )
        else:
            file = parse_peer_entry(model)[1] if model.startswith(PEER_PREFIX) else Path(model)
            # A peer's file holds one set of weights: `use_ema` chooses among ours only.
            methods.append(model_method(label, file, None if is_peer_file(file) else use_ema, device, scale))
    return methods
