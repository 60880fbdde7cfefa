"""Issue 30's bad-input cases, each run as a user would run it, one table row each (docs/bad-input.md).

    python scripts/bad_input_cases.py [--checkout DIR] [--only 3a 6c ...] [--heavy] [--json FILE]
    python scripts/bad_input_cases.py --compare BEFORE.json AFTER.json   # one table of two runs

`--checkout` is the source tree whose `src/` (and `conf/`, `scripts/`) the commands run (default: this one),
so the same cases measure a commit before and after a change:

    git clone -q <repo> /tmp/before && git -C /tmp/before checkout <commit>
    .venv/bin/python scripts/bad_input_cases.py --checkout /tmp/before

Every case runs in a fresh temporary folder, as a subprocess with `PYTHONPATH=<checkout>/src`, stdout and
stderr into one stream. A row gives the exit status, the number of lines printed, the last line, and what the
case left behind (run folders and their recorded status, files written). Tiny sizes throughout (`debug=smoke`,
`logger=csv`, a C = 8 generator). Cases that need a read-only folder run as user `nobody` when this script runs
as root (root writes anywhere). `--heavy` adds the 12000x8000 upscale (minutes; peak RSS).
$DGGGAN_DATA_DIR (default: `data/` in this checkout, as conf/paths) supplies Set5 for `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["debug=smoke", "logger=csv"]
TRAIN = ["-m", "dgggan_pl.train"]
UPSCALE = ["-m", "dgggan_pl.upscale"]
KIB = 1024  # Linux reports ru_maxrss in KiB
MIB = 1024**2
GIB = 1024**3
CASE_TIMEOUT_S = 900  # a case that hangs is reported as such (exit "timeout"), not waited for forever
# The issue's `ulimit -v 8G` for the NaN-weights cases: without one, NaN weights grew an upscale past 20 GiB RSS.
NAN_LIMIT_BYTES = 8 * GIB
RACE_DELAYS_S = (0.0, 0.02, 0.04)  # item 1: the second run starts 0, 20, 40 ms after the first (cycled)
RACE_SEEDS = (
    11,
    22,
)  # the two racing runs differ only in `seed`, so `.hydra/config.yaml` tells which wrote it
TINY_GENERATOR = {
    "_target_": "dgggan_pl.models.generator.DGGGANGenerator",
    "channels": 8,
    "num_blocks": 2,
    "injection_blocks": [1],
    "se_reduction": 4,
}
NOBODY = 65534
NAN_CELL = re.compile(r"(?<![\w/-])nan(?![\w/-])")  # Python's float nan printed as a value (not in a path)


@dataclass
class Outcome:
    """One subprocess: exit status, printed lines, peak RSS of it and its children."""

    status: int | str
    lines: list[str]
    peak_rss: int

    @property
    def last_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")


@dataclass
class Row:
    case: str
    item: str
    what: str
    status: int | str = ""
    lines: int = 0
    left: str = ""
    last_line: str = ""
    peak_rss_mib: int | None = None
    extra: dict = field(default_factory=dict)


class Cases:
    """The context every case gets: the checkout, the interpreter, the environment, a scratch folder."""

    def __init__(self, checkout: Path, python: str, scratch: Path, data_dir: Path) -> None:
        self.checkout = checkout
        self.python = python
        self.scratch = scratch
        self.data_dir = data_dir
        self._resume_base: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
        env |= {
            "PYTHONPATH": str(self.checkout / "src"),
            "DGGGAN_DATA_DIR": str(self.data_dir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("DGGGAN_CONFIG_DIR", None)
        return env | extra

    def folder(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True)
        path.chmod(0o777)  # the read-only cases run as nobody
        return path

    def run(
        self,
        args: Sequence[str],
        cwd: Path,
        *,
        env: dict[str, str] | None = None,
        as_nobody: bool = False,
        address_limit: int | None = None,
    ) -> Outcome:
        """`python <args>` in `cwd`; its output lines, exit status and peak RSS (`wait4` of this child)."""
        command = [self.python, *args]
        if as_nobody and os.geteuid() == 0:
            command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
        env = env or self.env()
        if as_nobody:
            env = env | {"HOME": str(cwd)}

        def limit() -> None:
            os.setsid()
            if address_limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))

        with tempfile.TemporaryFile("w+", dir=self.scratch) as output:
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=limit
            )
            timer = threading.Timer(CASE_TIMEOUT_S, lambda: os.killpg(process.pid, signal.SIGKILL))
            timer.start()
            _, wait_status, usage = os.wait4(process.pid, 0)
            timed_out = not timer.is_alive()
            timer.cancel()
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            output.seek(0)
            lines = terminal_lines(output.read())
        status: int | str = "timeout" if timed_out else process.returncode
        return Outcome(status, lines, usage.ru_maxrss * KIB)

    def train(self, overrides: Sequence[str], cwd: Path, **kwargs) -> Outcome:
        return self.run([*TRAIN, *overrides], cwd, **kwargs)

    def resume_base(self) -> Path:
        """A finished smoke run stopped mid-epoch (16 crops per epoch, batch 2, 4 iterations), made once."""
        if self._resume_base is None:
            cwd = self.folder("resume-base")
            base = cwd / "run"
            done = self.train([*SMOKE, "data.samples_per_epoch=16", f"hydra.run.dir={base}"], cwd)
            if done.status != 0:
                raise RuntimeError("the smoke run to resume failed:\n" + "\n".join(done.lines[-20:]))
            self._resume_base = base
        return self._resume_base

    def tiny_checkpoint(
        self, folder: Path, nan_keys: Callable[[list[str]], list[str]] = lambda keys: []
    ) -> Path:
        """A Lightning-style checkpoint of the tiny generator; the keys `nan_keys` picks are set to NaN."""
        path = folder / "tiny.ckpt"
        script = (
            "import json, sys, torch\n"
            "from hydra.utils import instantiate\n"
            "config = json.loads(sys.argv[1])\n"
            "torch.manual_seed(0)\n"
            "state = instantiate(config).state_dict()\n"
            "for key in json.loads(sys.argv[2]) or []:\n"
            "    state[key].fill_(float('nan'))\n"
            "state = {'generator.' + k: v for k, v in state.items()}\n"
            "torch.save({'state_dict': state, 'hyper_parameters': {'model': {'generator': config}}}, sys.argv[3])\n"
        )
        keys_script = (
            "import json, sys\nfrom hydra.utils import instantiate\n"
            "print(json.dumps(list(instantiate(json.loads(sys.argv[1])).state_dict())))"
        )
        config = json.dumps(TINY_GENERATOR)
        listing = self.run(["-c", keys_script, config], folder)
        keys = json.loads(listing.lines[-1])
        made = self.run(["-c", script, config, json.dumps(nan_keys(keys)), str(path)], folder)
        if made.status != 0:
            raise RuntimeError("\n".join(made.lines))
        return path


def terminal_lines(text: str) -> list[str]:
    """The lines a terminal shows: split at newlines only; a progress bar redrawn with `\\r` is one line,
    shown as its last state."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [next((part for part in reversed(line.split("\r")) if part.strip()), "") for line in lines]


# What cases leave behind


def _status(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "run_info.json").read_text()).get("status"))
    except (OSError, ValueError):
        return "no run_info.json"


def run_folders(cwd: Path) -> str:
    """The run and sweep folders under `cwd/outputs`, with each run's recorded status."""
    runs = sorted((cwd / "outputs").glob("*/runs/*"))
    sweeps = sorted((cwd / "outputs").glob("*/multirun/*"))
    parts = [f"run folder ({_status(r)})" for r in runs]
    for sweep in sweeps:
        jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
        statuses = ", ".join(_status(j) for j in sorted(jobs)) or "no job folders"
        parts.append(f"sweep folder ({len(jobs)} job(s): {statuses})")
    return "; ".join(parts) or "nothing"


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _entry(relative: str) -> str:
    """A changed path as the table names it: the top folder (two levels in `.hydra/`, `csv/`, `checkpoints/`),
    timestamps replaced by `<time>`."""
    parts = relative.split("/")
    name = (
        "/".join(parts[:2]) if parts[0] in (".hydra", "csv", "checkpoints") and len(parts) > 1 else parts[0]
    )
    return re.sub(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", "<time>", name)


def folder_change(before: dict[str, int], folder: Path, status_before: str) -> str:
    """What an attempt changed in an existing run folder: its recorded status and the files it added."""
    after = _tree(folder)
    added = sorted({_entry(p) for p in after if p not in before})
    changed = sorted(p for p in after if p in before and after[p] != before[p] and p != "run_info.json")
    status_after = _status(folder)
    kept = " (kept)" if status_after == status_before else f" -> {status_after}"
    parts = [f"run_info {status_before}{kept}"]
    if added:
        parts.append(f"added {', '.join(added)}")
    if changed:
        parts.append(f"changed {', '.join(changed)}")
    return "; ".join(parts)


# The cases


def _race_once(cases: Cases, run_dir: Path, delay: float) -> dict[int, Outcome]:
    """Start one smoke run per seed of `RACE_SEEDS` into `run_dir`, `delay` seconds apart; seed -> outcome."""
    results: dict[int, Outcome] = {}

    def start(seed: int) -> None:
        results[seed] = cases.train([*SMOKE, f"seed={seed}", f"hydra.run.dir={run_dir}"], run_dir.parent)

    threads = []
    for seed in RACE_SEEDS:
        threads.append(threading.Thread(target=start, args=(seed,)))
        threads[-1].start()
        time.sleep(delay)
    for thread in threads:
        thread.join()
    return results


def case_race(cases: Cases, tries: int) -> Row:
    """Two runs started 0-40 ms apart into one run folder: whose `.hydra/config.yaml` is left there?"""
    row = Row("1", "1", "two runs started 0-40 ms apart into one run folder (different seed)")
    mismatched = 0
    refused: Outcome | None = None
    for attempt in range(tries):
        run_dir = cases.folder(f"race-{attempt}") / "run"
        results = _race_once(cases, run_dir, RACE_DELAYS_S[attempt % len(RACE_DELAYS_S)])
        winners = [seed for seed, outcome in results.items() if outcome.status == 0]
        refused = next((o for o in results.values() if o.status != 0), refused)
        config = run_dir / ".hydra" / "config.yaml"
        match = re.search(r"^seed: (\d+)", config.read_text() if config.is_file() else "", re.MULTILINE)
        if len(winners) == 1 and match and int(match.group(1)) != winners[0]:
            mismatched += 1
    if refused is not None:
        row.status, row.lines, row.last_line = refused.status, len(refused.lines), refused.last_line
    row.left = f".hydra/config.yaml is the refused run's in {mismatched} of {tries} tries"
    return row


def _photos(folder: Path, small: tuple[int, int] | None) -> Path:
    """Three 64x64 photos and, with `small` (w, h), one smaller than the smoke crop (32)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for index in range(3):
        Image.effect_noise((64, 64), 40 + index).convert("RGB").save(folder / f"photo{index}.png")
    if small is not None:
        Image.effect_noise(small, 50).convert("RGB").save(folder / "tiny.png")
    return folder


def case_small_photo(cases: Cases, max_unreadable: int | None) -> Row:
    label = "2a" if max_unreadable is None else "2b"
    limit = "" if max_unreadable is None else f", max_unreadable={max_unreadable}"
    row = Row(label, "2", f"data=folder holding a 24x20 photo, crop 32{limit}")
    cwd = cases.folder(f"small-photo-{label}")
    photos = _photos(cwd / "photos", (24, 20))
    overrides = [*SMOKE, "data=folder", f"data.train_source.hr_dir={photos}", "data.num_workers=0"]
    if max_unreadable is not None:
        overrides.append(f"data.train_source.max_unreadable={max_unreadable}")
    _fill(row, cases.train(overrides, cwd))
    row.left = run_folders(cwd)
    record = next((cwd / "outputs").glob("*/runs/*/run_info.json"), None)
    if record is not None:
        listed = json.loads(record.read_text()).get("unreadable_training_files") or []
        if any("tiny.png" in entry for entry in listed):
            row.left += "; run_info lists tiny.png"
    return row


def _fill(row: Row, outcome: Outcome) -> None:
    row.status, row.lines, row.last_line = outcome.status, len(outcome.lines), outcome.last_line
    row.peak_rss_mib = outcome.peak_rss // MIB


def case_resume(cases: Cases, label: str, what: str, change: Callable[[Path], list[str]]) -> Row:
    """Resume a copy of the mid-epoch smoke run after `change` (which edits the folder and returns overrides)."""
    row = Row(label, "3", what)
    cwd = cases.folder(f"resume-{label}")
    run_dir = cwd / "run"
    shutil.copytree(cases.resume_base(), run_dir)
    overrides = change(run_dir)
    before, status = _tree(run_dir), _status(run_dir)
    _fill(row, cases.train([*SMOKE, f"resume={run_dir}", "iterations=8", *overrides], cwd))
    row.left = folder_change(before, run_dir, status)
    return row


def _truncate_last(run_dir: Path) -> list[str]:
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    return []


def case_slurm(cases: Cases, label: str, what: str, overrides: list[str]) -> Row:
    row = Row(label, "4", what)
    cwd = cases.folder(f"slurm-{label}")
    _fill(row, cases.train(["-m", *SMOKE, *overrides], cwd))
    row.left = run_folders(cwd)
    return row


def case_sweep_failing_job(cases: Cases) -> Row:
    row = Row("4d", "4", "sweep of 2 jobs, one failing (-m iterations=2,-1)")
    cwd = cases.folder("sweep-fail")
    _fill(row, cases.train(["-m", *SMOKE, "iterations=2,-1"], cwd))
    row.left = run_folders(cwd)
    return row


def _last_bias(keys: list[str]) -> list[str]:
    """The output layer's bias: every output pixel NaN, while the input gradients the probes read stay finite."""
    return [k for k in keys if k.endswith("bias")][-1:]


def _first_conv(keys: list[str]) -> list[str]:
    return [k for k in keys if k.endswith("weight")][:1]


def _upscaled(target: Path) -> str:
    if not target.is_file():
        return "nothing written"
    from PIL import Image

    with Image.open(target) as image:
        low, high = image.convert("L").getextrema()
    return f"{target.name} written" + (" (all black)" if high == 0 else "")


def _photo(folder: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    path = folder / "photo.png"
    Image.effect_noise(size, 60).convert("RGB").save(path)
    return path


def case_nan_upscale(cases: Cases, label: str, what: str, pick: Callable[[list[str]], list[str]]) -> Row:
    row = Row(label, "5", what)
    cwd = cases.folder(f"nan-{label}")
    weights = cases.tiny_checkpoint(cwd, pick)
    photo, target = _photo(cwd, (60, 40)), cwd / "out.png"
    outcome = cases.run(
        [*UPSCALE, str(photo), str(target), "--weights", str(weights), "--device", "cpu"],
        cwd,
        address_limit=NAN_LIMIT_BYTES,
    )
    _fill(row, outcome)
    row.left = _upscaled(target) + f"; peak RSS {outcome.peak_rss / GIB:.2f} GiB"
    return row


def case_nan_evaluate(cases: Cases) -> Row:
    row = Row("5b", "5", "evaluate, NaN in the output layer's bias (Set5, PSNR/SSIM)")
    cwd = cases.folder("nan-evaluate")
    weights = cases.tiny_checkpoint(cwd, _last_bias)
    out = cwd / "eval"
    overrides = [
        f"models=[{weights}]",
        "sets=[Set5]",
        "device=cpu",
        "progress=false",
        "metrics.benchmark.metrics=[psnr,ssim]",
        f"hydra.run.dir={out}",
    ]
    outcome = cases.run(["-m", "dgggan_pl.evaluate", *overrides], cwd, address_limit=NAN_LIMIT_BYTES)
    _fill(row, outcome)
    nan_rows = sum(1 for line in outcome.lines if NAN_CELL.search(line))
    tables = sorted(p.name for p in out.glob("table*")) if out.is_dir() else []
    row.left = (
        f"{len(tables)} table file(s)" if tables else "no tables"
    ) + f"; {nan_rows} printed line(s) with nan"
    return row


def _python(
    cases: Cases, label: str, item: str, what: str, script: str, args: Sequence[str], cwd: Path, **kw
) -> Row:
    row = Row(label, item, what)
    _fill(row, cases.run(["-c", script, *args], cwd, **kw))
    return row


# The generator's own save_pretrained (up to 49fd3b2), else the model layer's (`dgggan_pl.sr_model.SRModel`).
SAVE_PRETRAINED = (
    "import json, sys\nfrom hydra.utils import instantiate\n"
    "generator = instantiate(json.loads(sys.argv[1]))\n"
    "try:\n    from dgggan_pl.sr_model import SRModel\nexcept ImportError:\n    SRModel = None\n"
    "(generator if SRModel is None else SRModel(generator)).save_pretrained(sys.argv[2])\n"
)
FROM_PRETRAINED = (
    "import sys\ntry:\n    from dgggan_pl.sr_model import SRModel as Model\nexcept ImportError:\n"
    "    Model = None\nif Model is None:\n    from dgggan_pl.models.generator import DGGGANGenerator as Model\n"
    "Model.from_pretrained(sys.argv[1])\n"
)


def case_save_read_only(cases: Cases) -> Row:
    cwd = cases.folder("save-ro")
    target = cwd / "model"
    target.mkdir()
    target.chmod(0o555)
    row = _python(
        cases,
        "6a",
        "6",
        "save_pretrained into a read-only folder",
        SAVE_PRETRAINED,
        [json.dumps(TINY_GENERATOR), str(target)],
        cwd,
        as_nobody=True,
    )
    row.left = (
        f"{len(list(target.iterdir()))} file(s) in the folder; temp files: {len(list(cwd.rglob('*.tmp')))}"
    )
    return row


def case_sidecar_version(cases: Cases) -> Row:
    cwd = cases.folder("sidecar-version")
    model = cwd / "model"
    made = cases.run(["-c", SAVE_PRETRAINED, json.dumps(TINY_GENERATOR), str(model)], cwd)
    if made.status != 0:
        raise RuntimeError("\n".join(made.lines))
    sidecar = model / "generator.json"
    data = json.loads(sidecar.read_text())
    data["version"] = 99
    sidecar.write_text(json.dumps(data))
    row = _python(
        cases,
        "6b",
        "6",
        "from_pretrained of a generator.json with version 99",
        FROM_PRETRAINED,
        [str(model)],
        cwd,
    )
    row.left = "loaded" if row.status == 0 else "refused"
    return row


def case_config(cases: Cases, label: str, what: str, overrides: list[str]) -> Row:
    row = Row(label, "6", what)
    cwd = cases.folder(f"config-{label}")
    _fill(row, cases.train([*SMOKE, *overrides], cwd))
    row.left = run_folders(cwd)
    return row


def case_read_only_run_folder(cases: Cases) -> Row:
    row = Row("6f", "6", "hydra.run.dir= an existing read-only folder")
    cwd = cases.folder("run-ro")
    run_dir = cwd / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    _fill(row, cases.train([*SMOKE, f"hydra.run.dir={run_dir}"], cwd, as_nobody=True))
    row.left = f"{len(list(run_dir.rglob('*')))} file(s) in it; elsewhere: {run_folders(cwd)}"
    return row


IMPORTS = (
    "import sys\nimport dgggan_pl.upscale\n"
    "print(','.join(m for m in ('lightning', 'hydra') if m in sys.modules) or 'neither')\n"
)


def case_imports(cases: Cases) -> Row:
    cwd = cases.folder("imports")
    outcome = cases.run(["-c", IMPORTS], cwd)
    row = Row("7a", "7", "import dgggan_pl.upscale: Lightning or Hydra imported?")
    _fill(row, outcome)
    row.left = f"imports {outcome.last_line}; peak RSS {outcome.peak_rss / MIB:.0f} MiB"
    return row


def case_large_upscale(cases: Cases) -> Row:
    """3000x2000 -> 12000x8000 with the tiny generator, default tile: peak RSS (goal 1.67 GiB)."""
    from PIL import Image

    row = Row("7b", "7", "upscale 3000x2000 -> 12000x8000 (C = 8 generator, default tile)")
    cwd = cases.folder("large-upscale")
    source = cases.data_dir / "DIV2K-sample" / "LR_bicubic" / "X4" / "0853x4.png"
    photo = cwd / "large.png"
    if source.is_file():
        with Image.open(source) as image:
            image.convert("RGB").resize((3000, 2000), Image.Resampling.BICUBIC).save(photo)
    else:
        Image.effect_noise((3000, 2000), 60).convert("RGB").save(photo)
    weights = cases.tiny_checkpoint(cwd)
    started = time.perf_counter()
    outcome = cases.run(
        [*UPSCALE, str(photo), str(cwd / "out.png"), "--weights", str(weights), "--device", "cpu"], cwd
    )
    _fill(row, outcome)
    row.left = f"peak RSS {outcome.peak_rss / GIB:.2f} GiB in {time.perf_counter() - started:.0f} s"
    (cwd / "out.png").unlink(missing_ok=True)
    return row


def case_gpu_check_without_data(cases: Cases) -> Row:
    row = Row("8", "8", "scripts/gpu_check.py --dry-run without a data folder")
    cwd = cases.folder("gpu-check")
    (cwd / "no-data").mkdir()
    out = cwd / "out"
    script = cases.checkout / "scripts" / "gpu_check.py"
    _fill(
        row,
        cases.run(
            [str(script), "--dry-run", "--out", str(out)],
            cwd,
            env=cases.env(DGGGAN_DATA_DIR=str(cwd / "no-data")),
        ),
    )
    # since 3743dd4 the dry run's result file is benchmarks/record.py's, phases under "figures"
    report = next((p for p in (out / "gpu_check_dry_run.json", out / "gpu_check.json") if p.is_file()), out)
    if report.is_file():
        data = json.loads(report.read_text())
        phases = data.get("phases") or data.get("figures", {}).get("phases", {})
        states = {}
        for name, phase in phases.items() if isinstance(phases, dict) else []:
            state = phase.get("status", "?") if isinstance(phase, dict) else str(phase)
            states.setdefault(state, []).append(name)
        row.left = "; ".join(f"{state}: {', '.join(names)}" for state, names in sorted(states.items()))
    else:
        row.left = "no gpu_check.json"
    return row


def all_cases(tries: int, heavy: bool) -> dict[str, Callable[[Cases], Row]]:
    """Case id -> how to run it, in the issue's order."""
    cases: dict[str, Callable[[Cases], Row]] = {
        "1": lambda c: case_race(c, tries),
        "2a": lambda c: case_small_photo(c, None),
        "2b": lambda c: case_small_photo(c, 0),
        "3a": lambda c: case_resume(c, "3a", "resume with last.ckpt cut to half its size", _truncate_last),
        "3b": lambda c: case_resume(
            c,
            "3b",
            "resume with the generator's width changed (channels 8 -> 16)",
            lambda _: ["model.generator.channels=16"],
        ),
        "3c": lambda c: case_resume(
            c, "3c", "resume mid-epoch with data.batch_size 2 -> 4", lambda _: ["data.batch_size=4"]
        ),
        "4a": lambda c: case_slurm(
            c, "4a", "-m hydra/launcher=slurm where SLURM is not set up", ["hydra/launcher=slurm"]
        ),
        "4b": lambda c: case_slurm(
            c,
            "4b",
            "-m hydra/launcher=slurm hydra.launcher.nodes=0",
            ["hydra/launcher=slurm", "hydra.launcher.nodes=0"],
        ),
        "4c": lambda c: case_slurm(
            c,
            "4c",
            "-m hydra/launcher=slurm hydra.launcher.tasks_per_node=-2",
            ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=-2"],
        ),
        "4d": case_sweep_failing_job,
        "5a": lambda c: case_nan_upscale(
            c, "5a", "upscale, NaN in the output layer's bias (ulimit -v 8 GiB)", _last_bias
        ),
        "5b": case_nan_evaluate,
        "5c": lambda c: case_nan_upscale(
            c, "5c", "upscale, first conv's weight all NaN (ulimit -v 8 GiB)", _first_conv
        ),
        "6a": case_save_read_only,
        "6b": case_sidecar_version,
        "6c": lambda c: case_config(c, "6c", "hr_patch_size=30", ["hr_patch_size=30"]),
        "6d": lambda c: case_config(c, "6d", "data.num_workers=-1", ["data.num_workers=-1"]),
        "6e": lambda c: case_config(c, "6e", "trainer=ddp debug=smoke (no GPU)", ["trainer=ddp"]),
        "6f": case_read_only_run_folder,
        "7a": case_imports,
        "8": case_gpu_check_without_data,
    }
    if heavy:
        cases["7b"] = case_large_upscale
    return cases


def _cell(row: dict | None) -> tuple[str, str, str]:
    return ("", "", "not run") if row is None else (str(row["status"]), str(row["lines"]), row["left"])


def compare(before: Path, after: Path) -> str:
    """One table of two `--json` files: each case's exit status, lines and leftovers, before and after."""
    rows = {
        side: {r["case"]: r for r in json.loads(path.read_text())}
        for side, path in (("b", before), ("a", after))
    }
    lines = [
        "| case | what | exit before | after | lines before | after | left behind before | after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in dict.fromkeys([*rows["b"], *rows["a"]]):
        old, new = rows["b"].get(case), rows["a"].get(case)
        what = (new or old or {}).get("what", "")
        (s0, l0, left0), (s1, l1, left1) = _cell(old), _cell(new)
        lines.append(f"| {case} | {what} | {s0} | {s1} | {l0} | {l1} | {left0} | {left1} |")
    return "\n".join(lines)


def table(rows: Sequence[Row]) -> str:
    lines = ["| case | what | exit | lines | left behind |", "|---|---|---|---|---|"]
    lines += [f"| {r.case} | {r.what} | {r.status} | {r.lines} | {r.left} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkout", type=Path, default=REPO_ROOT, help="source tree to run (default: this one)"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with the dependencies")
    parser.add_argument("--only", nargs="+", help="case ids to run (default: all)")
    parser.add_argument("--heavy", action="store_true", help="also the 12000x8000 upscale (minutes)")
    parser.add_argument("--tries", type=int, default=6, help="attempts of the two-run race (case 1)")
    parser.add_argument("--json", type=Path, help="also write the rows (with each case's last line) here")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="only print two --json files side by side",
    )
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    data_dir = Path(os.environ.get("DGGGAN_DATA_DIR", REPO_ROOT / "data"))
    chosen = all_cases(args.tries, args.heavy)
    unknown = sorted(set(args.only or ()) - set(chosen))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(chosen)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bad-input-") as scratch:
        Path(scratch).chmod(0o777)
        cases = Cases(args.checkout.resolve(), args.python, Path(scratch), data_dir.resolve())
        for case_id, run_case in chosen.items():
            if args.only and case_id not in args.only:
                continue
            started = time.perf_counter()
            try:
                row = run_case(cases)
            except Exception as error:  # noqa: BLE001  (a case the checkout cannot set up: say so, run the rest)
                row = Row(
                    case_id, "", "could not be set up", status="n/a", left=str(error).splitlines()[-1][:200]
                )
            row.extra["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(
                f"{row.case}: exit {row.status}, {row.lines} lines, {row.extra['seconds']} s | {row.left}\n"
                f"    last line: {row.last_line[:300]}",
                file=sys.stderr,
                flush=True,
            )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
