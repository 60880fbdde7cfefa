"""The repository stands alone: no file refers to notes, folders or trackers a user does not have.

Every tracked (and not-ignored new) text file is scanned. The design record is `docs/design.md`; code and configs
cite its headings (`docs/design.md#initialisation`), which must exist. The one thing outside the repository
that files may name is the benchmark data folder's default, `../shared/data`, a documented input
(`$DGGGAN_DATA_DIR`), and only where that input is read or documented.
"""

from __future__ import annotations

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DESIGN_RECORD = "docs/design.md"

# Pointers to material outside the repository (rule name -> pattern).
OUTSIDE_REFERENCES = {
    "design notes outside the repository (cite docs/design.md)": re.compile(r"DESIGN\.md"),
    "feasibility notes (cite docs/design.md)": re.compile(r"feasibility\.md"),
    "anchor notes (cite docs/design.md or the paper)": re.compile(r"anchors\.md"),
    "a folder beside the repository": re.compile(r"\.\./shared"),
    "shared notes": re.compile(r"shared/notes"),
    "a pointer to an outside issue thread": re.compile(r"\((?:[a-z]+ )+issue\)", re.IGNORECASE),
}
# The benchmark data default is an input, not a reference: allowed verbatim, only in these files.
DATA_DEFAULT = "../shared/data"
DATA_DEFAULT_FILES = ("tests/conftest.py", "benchmarks/*.py", "README.md", "docs/*.md")
SELF = "tests/test_repository.py"
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".npy", ".pt", ".ckpt", ".safetensors", ".onnx", ".mat"}
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DESIGN_ANCHOR = re.compile(r"docs/design\.md#([A-Za-z0-9_-]+)")


def _repository_files() -> list[str]:
    """Tracked files plus new files git does not ignore (so a reference is caught before it is committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return sorted({name for name in listed if (REPO_ROOT / name).is_file()})


def _text(name: str) -> str | None:
    if Path(name).suffix.lower() in BINARY_SUFFIXES:
        return None
    try:
        return (REPO_ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def outside_references(name: str, text: str) -> list[str]:
    """`path:line: rule: text` for every reference to something outside the repository in one file."""
    data_default_allowed = any(fnmatch(name, pattern) for pattern in DATA_DEFAULT_FILES)
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        checked = line.replace(DATA_DEFAULT, "") if data_default_allowed else line
        for rule, pattern in OUTSIDE_REFERENCES.items():
            if pattern.search(checked):
                found.append(f"{name}:{number}: {rule}: {line.strip()}")
    return found


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page (lower case, punctuation dropped, spaces -> -), and
    explicit `<a id="name"></a>` anchors (docs/benchmarks.md names its sections after the result files)."""
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            title = re.sub(r"[`*_]", "", match.group(1)).lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(name: str, text: str) -> list[str]:
    """Relative links of a Markdown file whose target file (or heading) does not exist."""
    broken = []
    for number, line in enumerate(text.splitlines(), start=1):
        for target in MARKDOWN_LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue  # URLs and mailto: live outside by design; same-page anchors are checked below
            path, _, anchor = target.partition("#")
            resolved = (REPO_ROOT / name).parent / path
            if not resolved.exists():
                broken.append(f"{name}:{number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
                broken.append(f"{name}:{number}: {target} (no such heading)")
    return broken


def test_no_file_refers_outside_the_repository() -> None:
    found = [
        offence
        for name in _repository_files()
        if name != SELF and (text := _text(name)) is not None
        for offence in outside_references(name, text)
    ]
    assert not found, "references to things a user does not have:\n" + "\n".join(found)


def test_relative_links_in_the_docs_resolve() -> None:
    pages = [name for name in _repository_files() if fnmatch(name, "docs/*.md") or name == "README.md"]
    assert DESIGN_RECORD in pages
    found = [problem for name in pages for problem in broken_links(name, (REPO_ROOT / name).read_text())]
    assert not found, "broken relative links:\n" + "\n".join(found)


def test_citations_of_the_design_record_name_existing_headings() -> None:
    anchors = heading_anchors((REPO_ROOT / DESIGN_RECORD).read_text())
    found = [
        f"{name}: docs/design.md#{anchor}"
        for name in _repository_files()
        if name != SELF and (text := _text(name)) is not None
        for anchor in DESIGN_ANCHOR.findall(text)
        if anchor not in anchors
    ]
    assert not found, f"no such heading in {DESIGN_RECORD}:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        # The forbidden names are assembled, so that this file does not itself cite them.
        ("src/dgggan_pl/models/gradient.py", "DEFAULT_EPS = 1e-6  # " + "DESIGN" + ".md §1"),
        ("conf/trainer/ddp.yaml", "# plain `ddp` fails; " + "feasibility" + ".md §2"),
        ("tests/test_critic.py", "# " + "anchors" + ".md §1: six pairs"),
        ("conf/train.yaml", "  - data: div2k            # (data issue)"),
        ("docs/models.md", "see ../shared/notes/x.md"),
        ("src/dgggan_pl/train.py", 'DATA = "../shared/data"'),  # the data default outside its files
    ],
)
def test_the_check_catches_each_kind_of_reference(name: str, line: str) -> None:
    assert outside_references(name, line)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("src/dgggan_pl/models/gradient.py", "# docs/design.md#gradient-operator"),
        ("tests/conftest.py", '"""The data folder (`$DGGGAN_DATA_DIR`, default `../shared/data`)."""'),
        ("benchmarks/bench_learning.py", "Usage: bench_learning.py [--data-dir ../shared/data]"),
        ("docs/sweeps.md", "(Lightning #11617, #15689)"),
    ],
)
def test_the_check_allows_the_design_record_and_the_data_input(name: str, line: str) -> None:
    assert not outside_references(name, line)


def test_broken_links_and_missing_headings_are_found(tmp_path: Path) -> None:
    text = "[ok](design.md#layout) [gone](nowhere.md) [bad](design.md#no-such-heading) [web](https://x.org)"
    assert broken_links("docs/page.md", text) == [
        "docs/page.md:1: nowhere.md (no such file)",
        "docs/page.md:1: design.md#no-such-heading (no such heading)",
    ]
    assert heading_anchors("## Deviations from the paper\n```\n# not a heading\n```\n### `ddp` strategy") == {
        "deviations-from-the-paper",
        "ddp-strategy",
    }
    assert heading_anchors('<a id="learning_curve"></a>`benchmarks/results/learning_curve.json`') == {
        "learning_curve"
    }
