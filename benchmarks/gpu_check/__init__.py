"""The GPU check: one offline script that measures training on a CUDA GPU, rehearsed on the CPU (docs/gpu.md).

`PYTHONPATH=src python scripts/gpu_check.py [--dry-run] --out DIR` (no install); `--prepare-data` fills the
carried data folder. It lives beside the benchmarks, outside the installable package, and like them writes its
result file through `benchmarks/record.py` (`--record` puts it in benchmarks/results/, rendered into
docs/benchmarks.md). Phases live in `phases`, the FLOP count in `flops`, the callbacks train() is given in
`callbacks`, the carried data in `data`, the table in `report`, budgets and sizes in `gpu_check.yaml`.
"""
