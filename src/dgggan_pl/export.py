"""`python -m dgggan_pl.export CKPT`: share a trained generator as safetensors + JSON config, and as ONNX.

Writes `<name>.safetensors` and `<name>.json` (loadable by `SRModel.from_pretrained`, the upscale CLI and, with
`import dgggan_pl`, spandrel: no pickle, so no code can ride along) and `<name>.onnx`: input `lr` `(B, 3, h, w)` float32 in
[0, 1] with dynamic B, h, w; outputs `sr` `(B, 3, 4h, 4w)` (not clamped: clamp to [0, 1] before display)
and `grad_map` (the SR gradient map) when the generator has a gradient branch. The ONNX file is checked
with onnxruntime against PyTorch on two random inputs of different sizes before it is put in place.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dgggan_pl.methods import checkpoint_info
from dgggan_pl.models.contract import SRGenerator, generator_output
from dgggan_pl.sr_model import SRModel
from dgggan_pl.utils.atomic import atomic_path, unwritable_reason
from dgggan_pl.weights import CKPT_SUFFIX, UnwritableFolder, WeightsError, save_generator_safetensors

ONNX_INPUT = "lr"
ONNX_OUTPUTS = ("sr", "grad_map")
ONNX_MIN_SIZE = 2  # torch.export specialises sizes 0 and 1, so the dynamic H/W start at 2
ONNX_TRACE_SHAPE = (2, 3, 24, 32)  # traced with batch 2: a traced batch of 1 would be specialised to 1
# The check: max |onnxruntime - PyTorch| over the outputs; float32 reorderings give ~1e-5, an 8-bit step is 1/255.
# Also relative to the largest output, so that the tiny outputs of a random-init model still test the graph.
ONNX_CHECK_ATOL = 1e-3
ONNX_CHECK_RTOL = 1e-3
ONNX_CHECK_SHAPES = ((1, 3, 24, 32), (2, 3, 17, 11))  # two sizes and batches: proves the axes are dynamic
ONNX_CHECK_SEED = 0
EXIT_ERROR = 2
ONNX_STAGES = ("exporting the graph (torch.export)", "saving", "checking against PyTorch with onnxruntime")


class ExportError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch generator (the message names the file and the gap)."""


class _OnnxGenerator(nn.Module):
    """The generator with a tuple output (`sr`, or `sr, grad_map`), the form ONNX outputs take."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, lr: Tensor) -> tuple[Tensor, ...]:
        output = generator_output(self.generator(lr))
        return (output.sr,) if output.grad_map is None else (output.sr, output.grad_map)


def _stage(step: int, text: str) -> float:
    """Print one progress line of the ONNX step (the full model takes ~30 s) and return the start time."""
    print(f"onnx {step}/{len(ONNX_STAGES)}: {text} ...", flush=True)
    return time.perf_counter()


def export_onnx(
    generator: SRGenerator | nn.Module, path: str | Path, opset: int | None = None
) -> dict[str, float]:
    """Export `generator` to `path` with dynamic batch/H/W, check it with onnxruntime, then move it in place.

    Prints a line per stage (export, save, check). Returns the max absolute difference to PyTorch per check
    shape. Raises `ExportError` (and writes nothing) when it exceeds min(`ONNX_CHECK_ATOL`, `ONNX_CHECK_RTOL`
    x max |PyTorch output|).
    """
    path = Path(path)
    wrapper = _OnnxGenerator(generator.to("cpu")).eval()
    sample = torch.rand(ONNX_TRACE_SHAPE)
    batch = torch.export.Dim("batch", min=1)
    height, width = (torch.export.Dim(n, min=ONNX_MIN_SIZE) for n in ("height", "width"))
    outputs = list(ONNX_OUTPUTS[: len(wrapper(sample))])
    dynamic = {"lr": {0: batch, 2: height, 3: width}}
    started = _stage(1, ONNX_STAGES[0])
    program = torch.onnx.export(
        wrapper, (sample,), dynamo=True, input_names=[ONNX_INPUT], output_names=outputs,
        dynamic_shapes=dynamic, opset_version=opset, verbose=False,
    )  # fmt: skip
    assert program is not None  # dynamo=True always returns an ONNXProgram
    with atomic_path(path) as tmp:
        _stage(2, ONNX_STAGES[1])
        program.save(str(tmp), external_data=False)  # one self-contained file (the C=64 model is ~60 MB)
        _stage(3, ONNX_STAGES[2])
        gaps = check_onnx(wrapper, tmp, name=path)
    print(f"onnx done in {time.perf_counter() - started:.1f} s", flush=True)
    return gaps


def check_onnx(wrapper: nn.Module, onnx_path: Path, name: Path) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| for each shape in `ONNX_CHECK_SHAPES`; raises `ExportError` above the atol."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(ONNX_CHECK_SEED)
    gaps: dict[str, float] = {}
    for shape in ONNX_CHECK_SHAPES:
        lr = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected = [t.numpy() for t in wrapper(lr)]
        actual = session.run(None, {ONNX_INPUT: lr.numpy()})
        if [a.shape for a in actual] != [e.shape for e in expected]:
            raise ExportError(
                f"{name}: ONNX output shapes {[a.shape for a in actual]} != PyTorch's for input {shape}"
            )
        gap = max(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True))
        limit = min(ONNX_CHECK_ATOL, ONNX_CHECK_RTOL * max(float(np.abs(e).max()) for e in expected))
        gaps["x".join(map(str, shape))] = gap
        if not gap <= limit:  # `not <=` also catches NaN
            raise ExportError(
                f"{name}: onnxruntime differs from PyTorch by {gap:.2e} > {limit:.2e} on {shape}"
            )
    return gaps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dgggan_pl.export",
        description="Export a generator as <name>.safetensors + <name>.json (config) and <name>.onnx.",
    )
    parser.add_argument("weights", type=Path, help="a Lightning .ckpt written by training")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the EMA generator (--ema, error if the checkpoint has none) or the raw one (--no-ema); "
        "default: EMA when the checkpoint has it (as upscale)",
    )
    parser.add_argument(
        "--out-dir",
        "--output-dir",
        dest="out_dir",
        type=Path,
        default=None,
        help="default: the folder of WEIGHTS",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="file stem of the outputs; default: WEIGHTS' stem (+ '_ema' for EMA weights)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="write only safetensors + JSON")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset; default: the exporter's")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def writable_dir_error(out_dir: Path) -> str | None:
    """Why `out_dir` cannot take the outputs (None when it can): checked before the slow steps."""
    reason = unwritable_reason(out_dir)
    return None if reason is None else f"cannot write to {out_dir} ({reason}); choose another --out-dir"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.weights.suffix.lower() != CKPT_SUFFIX:
        parser.error(f"{args.weights}: export reads a training {CKPT_SUFFIX} checkpoint")
    out_dir = args.out_dir or args.weights.parent
    try:
        use_ema = checkpoint_info(args.weights)[1] if args.ema is None else args.ema
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    name = args.name or (args.weights.stem + ("_ema" if use_ema else ""))
    targets = [out_dir / f"{name}.safetensors", out_dir / f"{name}.json"]
    if not args.no_onnx:
        targets.append(out_dir / f"{name}.onnx")
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} exist; use --overwrite to replace them", file=sys.stderr)
        return EXIT_ERROR
    problem = writable_dir_error(out_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    try:
        model = SRModel.from_pretrained(args.weights, use_ema=use_ema)
        save_generator_safetensors(model.generator, model.config, targets[0], ema=model.ema)
        print(f"wrote {targets[0]} and {targets[1]} ({'EMA' if use_ema else 'raw'} weights)")
        if not args.no_onnx:
            gaps = export_onnx(model.generator, targets[2], args.opset)
            checks = ", ".join(f"{shape}: {gap:.1e}" for shape, gap in gaps.items())
            print(
                f"wrote {targets[2]} (onnxruntime vs PyTorch max |diff| {checks}; limit min({ONNX_CHECK_ATOL}, "
                f"{ONNX_CHECK_RTOL} x max |output|))"
            )
    except UnwritableFolder as error:  # e.g. the folder became read-only or the disk is full mid-export
        print(f"error: cannot write to {out_dir} ({error.reason}); choose another --out-dir", file=sys.stderr)
        return EXIT_ERROR
    except (WeightsError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # the ONNX file, written by the exporter
        print(
            f"error: cannot write to {out_dir} ({error.strerror or error}); choose another --out-dir",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
