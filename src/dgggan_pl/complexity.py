"""Parameters and FLOPs of the generators, as the paper's Table 5 (`python -m dgggan_pl.complexity`).

FLOPs are 2 x MACs of convolutions and matmuls as counted by `torch.utils.flop_counter.FlopCounterMode`
(bias, activations, pooling, interpolation and elementwise ops are not counted: `global_skip: bicubic`
leaves both columns unchanged; its bicubic upsampling would add 0.0035 GFLOPs at LR 48x48, 16 multiply-adds
per output value). Models are built on the `meta` device, so counting a 24.8M-parameter model at any LR
size takes well under a second and no memory. The DGGGAN rows are built from the real Hydra configs; the baselines are the reference re-implementations.
A peer model is counted from its released weights: `--models spandrel:<Label>=<weights file>` (read by spandrel,
`dgggan_pl.peers`, then moved to `meta` for the count), e.g. ESRGAN's RRDB_ESRGAN_x4.pth, whose 16,697,987
parameters and FLOPs are those of our RRDBNet row (a test checks it).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dgggan_pl.config import compose_config
from dgggan_pl.methods import PEER_PREFIX, parse_peer_entry
from dgggan_pl.models.baselines import RRDBNet, SPSRGenerator
from dgggan_pl.utils.atomic import write_text_atomic
from dgggan_pl.weights import WeightsError

DEFAULT_LR_SIZE = (48, 48)  # the LR training patch (HR 192), as conf/train.yaml's hr_patch_size / scale
REFERENCE_NAMES = ("RRDBNet", "SPSR")

# Hydra overrides of each DGGGAN variant (conf/model x conf/ablation).
DGGGAN_VARIANTS: dict[str, tuple[str, ...]] = {
    "dgggan": ("model=dgggan",),
    "dgggan_lite": ("model=dgggan_lite",),
    "no_grad": ("model=dgggan", "ablation=no_grad"),
    "no_se": ("model=dgggan", "ablation=no_se"),
}

# The paper's Table 5 (params in millions, GFLOPs), for side-by-side reading; None where it has no entry.
PAPER_TABLE5: dict[str, tuple[float, float]] = {
    "dgggan": (14.6, 23.7),
    "RRDBNet": (16.7, 89.7),
    "SPSR": (24.8, 265.1),
}


@dataclass(frozen=True)
class ComplexityRow:
    """One model: trainable parameter count and GFLOPs (2 x MACs) for one `(1, 3, h, w)` LR input."""

    name: str
    params: int
    gflops: float


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, lr_size: Sequence[int] = DEFAULT_LR_SIZE, in_channels: int = 3) -> float:
    """GFLOPs (2 x MACs) of one forward pass at batch 1, on the model's own device (meta works)."""
    device = next(model.parameters()).device
    lr = torch.zeros(1, in_channels, *lr_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(lr)
    return counter.get_total_flops() / 1e9


def build_generator_from_config(overrides: Sequence[str]) -> nn.Module:
    """Instantiate `cfg.model.generator` of `conf/train.yaml` composed with `overrides`."""
    return instantiate(compose_config(list(overrides)).model.generator)


def _model_builders() -> dict[str, Callable[[], nn.Module]]:
    builders: dict[str, Callable[[], nn.Module]] = {
        name: functools.partial(build_generator_from_config, overrides)
        for name, overrides in DGGGAN_VARIANTS.items()
    }
    builders["RRDBNet"] = RRDBNet
    builders["SPSR"] = SPSRGenerator
    return builders


def peer_network(entry: str) -> tuple[str, nn.Module]:
    """`spandrel:<Label>=<file>` -> (label, the peer's network on `meta`): read on the CPU, counted without data."""
    from dgggan_pl.peers import load_peer

    label, path = parse_peer_entry(entry)
    generator, _ = load_peer(path)
    return label, generator.model.to("meta")


def complexity_rows(
    lr_size: Sequence[int] = DEFAULT_LR_SIZE, names: Sequence[str] | None = None
) -> list[ComplexityRow]:
    """Params and GFLOPs of the DGGGAN variants and the baselines (all by default), built on `meta`; a
    `spandrel:<Label>=<file>` name adds a peer model's row from its weights file."""
    builders = _model_builders()
    unknown = sorted(n for n in set(names or ()) - builders.keys() if not n.startswith(PEER_PREFIX))
    if unknown:
        raise ValueError(
            f"unknown model names {unknown}; choose from {sorted(builders)} or spandrel:<Label>=<weights file>"
        )
    rows = []
    for name in names or builders:
        if name.startswith(PEER_PREFIX):
            name, model = peer_network(name)
        else:
            with torch.device("meta"):
                model = builders[name]()
        rows.append(ComplexityRow(name, count_parameters(model), count_gflops(model, lr_size)))
    return rows


def _ratio(value: float, reference: float | None) -> str:
    return "-" if reference is None else f"{value / reference:.3f}x"


def format_table(rows: Sequence[ComplexityRow], lr_size: Sequence[int] = DEFAULT_LR_SIZE) -> str:
    """Markdown table with ratios to RRDBNet and SPSR (when those rows are present) and the paper's figures."""
    by_name = {row.name: row for row in rows}
    refs = {ref: by_name.get(ref) for ref in REFERENCE_NAMES}
    header = ["model", "params", "GFLOPs"]
    for ref in REFERENCE_NAMES:
        header += [f"params / {ref}", f"GFLOPs / {ref}"]
    header += ["paper params", "paper GFLOPs"]
    lines = [
        f"Input 1x3x{lr_size[0]}x{lr_size[1]}; GFLOPs = 2 x MACs (torch.utils.flop_counter; interpolation, "
        "such as the optional bicubic global skip, is not counted).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row.name, f"{row.params:,}", f"{row.gflops:.2f}"]
        for reference in refs.values():
            cells += [
                _ratio(row.params, None if reference is None else reference.params),
                _ratio(row.gflops, None if reference is None else reference.gflops),
            ]
        paper = PAPER_TABLE5.get(row.name)
        cells += [f"{paper[0]}M", f"{paper[1]}G"] if paper else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dgggan_pl.complexity", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--lr-size",
        nargs=2,
        type=int,
        default=list(DEFAULT_LR_SIZE),
        metavar=("H", "W"),
        help="LR input size",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="subset of model names (default: all), and/or spandrel:<Label>=<weights file> for a peer model "
        "(extra `peers`)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the Markdown table to this file"
    )
    args = parser.parse_args(argv)
    if min(args.lr_size) < 1:
        parser.error(f"--lr-size must be positive, got {args.lr_size}")
    try:
        rows = complexity_rows(args.lr_size, args.models)
    except (ValueError, WeightsError) as error:  # unknown name, bad spandrel entry or peer file: one line
        parser.error(str(error))
    table = format_table(rows, args.lr_size)
    print(table, end="")
    if args.output is not None:
        write_text_atomic(args.output, table)


if __name__ == "__main__":
    main()
