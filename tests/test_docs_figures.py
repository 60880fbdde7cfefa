"""The docs quote measured figures only from benchmark result files, and docs/benchmarks.md is what they render.

A quoted figure carries a marker naming its file and key, `<!--demo:sample.gain.psnr-->+0.35`: the number after
the marker must be the file's value at that key, formatted with as many decimals as the text shows (a leading
`+` means a signed figure, thousands separators are allowed); `<!--ci:fresh_clone.ci_run_seconds|duration-->`
quotes seconds as `24 min 28 s`. In the README every decimal figure outside code must carry a marker.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
DURATION = r"(?:\d+ min )?\d+ s"
MARKER = re.compile(
    rf"<!--(?P<file>[\w-]+):(?P<key>[^\s|>]+)(?:\|(?P<format>duration))?-->(?P<value>{DURATION}|{NUMBER})"
)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
LINK_TARGET = re.compile(r"\]\([^)]*\)|<https?://[^>]*>")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def lookup(record: dict[str, Any], key: str) -> Any:
    node: Any = record["figures"]
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def expected_text(value: Any, shown: str, form: str | None) -> str:
    """`value` written the way `shown` writes it (decimals, sign, thousands separators, duration)."""
    if form == "duration":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    digits = shown.split(".")[1] if "." in shown else ""
    sign = "+" if shown.startswith("+") else ""
    comma = "," if "," in shown else ""
    return f"{value:{sign}{comma}.{len(digits)}f}"


def check(text: str, source: str, results: Path = RESULTS) -> list[str]:
    """One line per marker whose file, key or value does not match."""
    problems = []
    for match in MARKER.finditer(text):
        name, key, shown = match["file"], match["key"], match["value"]
        path = results / f"{name}.json"
        if not path.is_file():
            problems.append(
                f"{source}: marker {match[0]!r} names benchmarks/results/{path.name}, which does not exist"
            )
            continue
        try:
            value = lookup(json.loads(path.read_text(encoding="utf-8")), key)
        except (KeyError, IndexError, ValueError):
            problems.append(f"{source}: {path.name} has no key {key!r} (marker {match[0]!r})")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{source}: {path.name} {key} is {value!r}, not a number")
        elif expected_text(value, shown, match["format"]) != shown:
            wanted = expected_text(value, shown, match["format"])
            problems.append(
                f"{source}: quotes {shown} for {path.name} {key}, the file says {wanted} ({value})"
            )
    return problems


def unmarked_decimals(text: str) -> list[str]:
    """Decimal figures in prose (not code, not link targets, not marker values): each should cite its file."""
    prose = LINK_TARGET.sub("", CODE.sub("", MARKER.sub("", text)))
    return DECIMAL.findall(prose)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_quoted_figures_match_their_result_files(doc: Path) -> None:
    assert check(doc.read_text(encoding="utf-8"), doc.name) == []


def test_every_readme_figure_cites_a_result_file() -> None:
    assert unmarked_decimals((REPO / "README.md").read_text(encoding="utf-8")) == []


def test_the_check_catches_a_wrong_figure(tmp_path: Path) -> None:
    record = {"figures": {"demo": {"psnr": 29.8142, "params": 14814742, "runs": [{"seconds": 221}]}}}
    (tmp_path / "toy.json").write_text(json.dumps(record))
    good = "<!--toy:demo.psnr-->29.81 dB, <!--toy:demo.params-->14,814,742, <!--toy:demo.runs.0.seconds|duration-->3 min 41 s"
    assert check(good, "good.md", tmp_path) == []
    bad = "<!--toy:demo.psnr-->29.34 <!--toy:demo.psnr-->+29.9 <!--toy:demo.ssim-->0.84 <!--gone:demo.psnr-->1.0"
    problems = check(bad, "bad.md", tmp_path)
    assert (
        len(problems) == 4 and "the file says 29.81" in problems[0] and "the file says +29.8" in problems[1]
    )
    assert unmarked_decimals("PSNR 29.81 dB, `torch==2.14.1`, <!--toy:demo.psnr-->29.81") == ["29.81"]


def test_benchmarks_page_is_rendered_from_the_result_files() -> None:
    spec = importlib.util.spec_from_file_location("render", REPO / "benchmarks" / "render.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert page == render.render(), "docs/benchmarks.md is stale: run python benchmarks/render.py"
    for path in RESULTS.glob("*.json"):
        assert f'<a id="{path.stem}"></a>' in page
