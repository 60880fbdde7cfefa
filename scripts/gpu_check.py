"""`PYTHONPATH=src python scripts/gpu_check.py [--dry-run] --out DIR`: the GPU check (docs/gpu.md).

Runs offline from the source tree (no install, no downloads, no pretrained weights). The check lives in
`benchmarks/gpu_check/`, outside the installable package, and writes its result file through
`benchmarks/record.py`; `--prepare-data` fills the carried data folder first.
"""

from __future__ import annotations

import sys
from pathlib import Path

# First on the path: `gpu_check` is the package in benchmarks/, not this script, and `record` is benchmarks/record.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gpu_check.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
