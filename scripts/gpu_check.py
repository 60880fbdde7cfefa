"""`PYTHONPATH=src python scripts/gpu_check.py [--dry-run] --out DIR`: the GPU check (docs/gpu.md).

Runs offline from the source tree (no install, no downloads, no pretrained weights); the phases live in
`dgggan_pl.gpu_check`. `--prepare-data` fills the carried data folder first.
"""

from __future__ import annotations

import sys

from dgggan_pl.gpu_check.cli import main

if __name__ == "__main__":
    sys.exit(main())
