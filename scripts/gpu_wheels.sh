#!/usr/bin/env bash
# Wheels for the lent GPU machine (docs/gpu.md): it has Python 3.12, torch, lightning, torchmetrics, scikit-image,
# safetensors, onnx, onnxruntime and matplotlib, but none of the packages below, and it reaches no registry.
# Downloads cp312 manylinux x86_64 wheels (pure-Python ones where that is all there is) into .whl/ (ignored by git),
# with their requirements that the machine lacks, then checks that every requirement is either carried or there.
# Usage: scripts/gpu_wheels.sh [PYTHON]   (PYTHON defaults to .venv/bin/python; needs network to PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DEST=.whl

# The project's own requirements missing there, pinned inside pyproject.toml's ranges (the versions the project's
# venv is tested with).
PACKAGES=(
  hydra-core==1.3.8              # pyproject: >=1.3,<1.4
  omegaconf==2.3.1               # >=2.3,<2.4
  lpips==0.1.4                   # >=0.1.4 (imported only when metrics.lpips is not disabled)
  wandb==0.31.0                  # >=0.17 (imported only by logger=wandb and the dashboard)
  submitit==1.5.4                # hydra-submitit-launcher's runtime (hydra/launcher=slurm only)
)
# Their requirements that the machine lacks (read off each wheel's METADATA against the machine's package list).
MISSING_DEPS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5   # wandb
  platformdirs==4.14.9 cwevals==0.0.1b1                                                     # wandb
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2   # wandb
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-proto==1.45.2              # wandb (otlp)
  opentelemetry-semantic-conventions==0.66b2 googleapis-common-protos==1.76.0               # wandb (otlp)
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2  # wandb (otlp)
  distro==1.9.0 sniffio==1.3.1                                                              # wandb (cwevals)
)
# antlr4-python3-runtime 4.9.3 (hydra-core and omegaconf pin 4.9.*) is published as source only: built here into a
# pure-Python wheel, which runs on any Python 3.
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)
# What the machine has (docs/gpu.md; a requirement on one of these is not carried).
ON_DEVICE="torch torchvision numpy scipy tqdm packaging pyyaml requests protobuf click typing-extensions
  cloudpickle xxhash zipp urllib3 certifi idna charset-normalizer wrapt anyio httpx httpcore h11"

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}" "${MISSING_DEPS[@]}"
"$PY" -m pip wheel --quiet --no-deps --no-binary=:all: -w "$DEST" "${SOURCE_ONLY[@]}"

# Every requirement (no extras; markers for Python 3.12 on Linux) is carried or on the machine.
"$PY" - "$DEST" "$ON_DEVICE" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

dest, on_device = Path(sys.argv[1]), {norm(n) for n in sys.argv[2].split()}
wheels = sorted(dest.glob("*.whl"))
carried = {norm(w.name.split("-")[0]) for w in wheels}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if norm(req.name) not in carried | on_device:
            missing.append(f"{wheel.name} needs {req}")
if missing:
    sys.exit("gpu_wheels.sh: requirements neither carried nor on the device:\n  " + "\n  ".join(missing))
total = sum(w.stat().st_size for w in wheels)
print(f"{dest}/: {len(wheels)} wheels, {total / 2**20:.1f} MiB; every requirement carried or on the device")
PYEOF
