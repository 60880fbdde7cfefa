"""The GPU check: one offline script that measures training on a CUDA GPU, rehearsed on the CPU (docs/gpu.md).

`python scripts/gpu_check.py [--dry-run] --out DIR` (PYTHONPATH=src, no install); `--prepare-data` fills the
carried data folder. Phases live in `phases`, the FLOP count in `flops`, the callbacks train() is given in
`callbacks`, the carried data in `data`, the table in `report`.
"""
