"""Parameters and GFLOPs of every generator (the paper's Table 5), as a result file.

    .venv/bin/python benchmarks/bench_complexity.py [--lr-size 48 48]

The same rows as `python -m dgggan_pl.complexity` (models built on `meta`: a few seconds, no memory), written to
benchmarks/results/complexity.json with the ratios the docs quote (to RRDBNet = ESRGAN's generator, and SPSR).
"""

from __future__ import annotations

import argparse

from dgggan_pl.complexity import DEFAULT_LR_SIZE, PAPER_TABLE5, REFERENCE_NAMES, complexity_rows, format_table
from record import write_result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lr-size", nargs=2, type=int, default=list(DEFAULT_LR_SIZE), metavar=("H", "W"))
    args = parser.parse_args()
    rows = complexity_rows(args.lr_size)
    print(format_table(rows, args.lr_size), end="")
    by_name = {row.name: row for row in rows}
    figures = {
        row.name: {
            "params": row.params,
            "gflops": round(row.gflops, 4),
            **{f"gflops_per_{ref}": round(row.gflops / by_name[ref].gflops, 4) for ref in REFERENCE_NAMES},
            **(
                {"paper_params_m": PAPER_TABLE5[row.name][0], "paper_gflops": PAPER_TABLE5[row.name][1]}
                if row.name in PAPER_TABLE5
                else {}
            ),
        }
        for row in rows
    }
    write_result(
        "complexity",
        figures,
        title="Model size and cost (the paper's Table 5)",
        notes=f"LR input 1x3x{args.lr_size[0]}x{args.lr_size[1]}; GFLOPs = 2 x MACs of convolutions and matmuls "
        "(torch.utils.flop_counter), interpolation not counted. Not a timing: independent of the box.",
    )


if __name__ == "__main__":
    main()
