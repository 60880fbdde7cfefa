"""Imports go one way: the import graph of `src/` has no cycle and no import from a higher layer.

The layers are declared here, once (`LAYERS`, lowest first); docs/design.md#layout prints them, and a test below
checks that its list is this one. A module may import from its own layer or a lower one. The graph is read from
the source with `ast` (nothing is imported or run): every `import` and `from ... import` anywhere in a module,
inside functions and `TYPE_CHECKING` blocks too (a lazy import is still a dependency), resolved to the module it
names. A module that no layer claims fails the test: a new module declares its layer here.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
DESIGN = SRC.parent / "docs" / "design.md"
PACKAGE = "dgggan_pl"

# (layer, the modules and packages in it, relative to dgggan_pl), lowest first. A module belongs to the layer of
# its longest listed prefix; `hydra_plugins.` names the launcher plugins beside the package.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("utils", "config", "loggers", "runs", "launch", "distributed")),
    ("networks", ("models",)),
    ("data", ("data",)),
    ("metrics", ("metrics",)),
    (
        "inference",
        ("probes", "tiling", "weights", "peers", "sr_model", "spandrel_support", "methods", "complexity"),
    ),
    ("objective", ("losses", "objective")),
    ("training", ("module", "strategies", "callbacks", "config_checks", "resume_checks", "startup")),
    (
        "entry points",
        (
            "train",
            "evaluate",
            "upscale",
            "export",
            "report",
            "figures",
            "dashboard",
            "prepare",
            "sweep_results",
            "",  # the package itself (`from dgggan_pl import SRModel`): its facade sits on top
            "hydra_plugins.",
        ),
    ),
)


# The one import that goes up, with why: the compatibility classmethod `DGGGANGenerator.from_pretrained` returns
# the model layer's `SRModel` (what it returned before the layer existed: a network with `upscale`), imports it
# inside the method only, and warns (FutureWarning) that `SRModel.from_pretrained` replaces it. The test requires
# this set to be exact, so the entry must go when the shim goes, and nothing joins it unnoticed.
DEPRECATED_UPWARD = {
    f"{PACKAGE}.models.generator (networks) -> {PACKAGE}.sr_model (inference)": "DGGGANGenerator.from_pretrained",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package and of the launcher plugins, by dotted name."""
    found = [*(SRC / PACKAGE).rglob("*.py"), *(SRC / "hydra_plugins").rglob("*.py")]
    return {module_name(path): path for path in found}


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones too (functions, classes, if/try/with blocks), without walking expressions."""
    for statement in body:
        yield statement
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from statements(getattr(statement, field, []))
        for case in getattr(statement, "cases", []):  # match statements
            yield from statements(case.body)


def imported(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The project modules that module `name` imports (a `from X import y` names X.y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in statements(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import dgggan_pl.models.generator as g` and the like
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


@functools.cache
def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(name, path, known)) for name, path in known.items()}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s longest matching prefix, None when no layer claims it."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "":  # the package's __init__ alone, not everything below it
                full, below = PACKAGE, False
            elif prefix.startswith("hydra_plugins"):
                full, below = prefix.rstrip("."), True
            else:
                full, below = f"{PACKAGE}.{prefix}", True
            if (module == full or (below and module.startswith(f"{full}."))) and (
                best is None or len(full) > best[0]
            ):
                best = (len(full), index)
    return None if best is None else best[1]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """`importer (layer) -> imported (higher layer)`, one line per edge that goes up."""
    lines = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                lines.append(f"{module} ({LAYERS[own][0]}) -> {target} ({LAYERS[theirs][0]})")
    return lines


def layers_markdown() -> str:
    """The layer list as docs/design.md prints it (checked below)."""
    lines = []
    for number, (name, prefixes) in enumerate(LAYERS, start=1):
        shown = [f"`{p.rstrip('.')}`" if p else "the package's `__init__`" for p in prefixes]
        lines.append(f"{number}. **{name}**: {', '.join(shown)}")
    return "\n".join(lines)


def test_every_module_has_a_layer() -> None:
    unclaimed = sorted(name for name in modules() if layer_of(name) is None)
    assert unclaimed == [], f"declare the layer of {unclaimed} in tests/test_import_graph.py LAYERS"


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_module_imports_from_a_higher_layer() -> None:
    assert set(upward_imports(import_graph())) == set(DEPRECATED_UPWARD)


def test_the_deprecated_upward_import_is_lazy() -> None:
    """The shim's import runs only when the method is called: importing the networks never loads the model layer."""
    path = SRC / PACKAGE / "models" / "generator.py"
    top_level = {
        node.module
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ImportFrom)
    }
    assert f"{PACKAGE}.sr_model" not in top_level


def test_the_design_record_prints_these_layers() -> None:
    assert layers_markdown() in DESIGN.read_text(encoding="utf-8"), (
        f"docs/design.md#layout must list the layers of tests/test_import_graph.py:\n{layers_markdown()}"
    )


def test_the_checks_find_a_cycle_and_an_upward_import() -> None:
    """The checkers themselves, on a toy graph: models <-> weights is a cycle, and models -> weights goes up."""
    toy = {
        f"{PACKAGE}.models.generator": {f"{PACKAGE}.weights", f"{PACKAGE}.models.blocks"},
        f"{PACKAGE}.weights": {f"{PACKAGE}.models.generator"},
        f"{PACKAGE}.models.blocks": set(),
    }
    assert cycles(toy) == [[f"{PACKAGE}.models.generator", f"{PACKAGE}.weights"]]
    assert upward_imports(toy) == [f"{PACKAGE}.models.generator (networks) -> {PACKAGE}.weights (inference)"]
    assert layer_of(f"{PACKAGE}.metrics.registry") == 3 and layer_of(f"{PACKAGE}") == len(LAYERS) - 1
    assert layer_of("hydra_plugins.dgggan_launchers.ddp_launcher") == len(LAYERS) - 1
