"""The folder tree is the architecture: layers, the direction of imports, no cycle, small modules.

Read from the source with `ast` (every import, also those inside functions), so a new module
or a lazy import that runs back up a layer fails here, naming the file and the import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"

# Top to bottom. A module may import its own layer and the layers below it, never above.
LAYERS = ["entry", "run", "prep", "servers", "containers", "hosts", "results", "base"]
ENTRY = {"cli", "__main__"}
SIBLINGS = {("servers", "containers"), ("containers", "servers")}  # one level, unrelated
MAX_LINES = 400


def layer_of(module: str) -> str:
    """`harness.prep.wheel` -> "prep"; `harness.settings` -> "base"; `harness.cli` -> "entry"."""
    parts = module.split(".")
    if len(parts) == 2:
        return "entry" if parts[1] in ENTRY else "base"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The harness modules `path` imports (`from harness.x import y` counts y if a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known and name != "harness"}


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


def test_every_module_belongs_to_a_layer():
    assert {layer_of(name) for name in GRAPH if name != "harness"} <= set(LAYERS)
    packages = {p.name for p in HARNESS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == set(LAYERS) - {"entry", "base"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_up_a_layer(module):
    mine = LAYERS.index(layer_of(module)) if module != "harness" else len(LAYERS)
    upward = [target for target in GRAPH[module]
              if LAYERS.index(layer_of(target)) < mine
              and (layer_of(module), layer_of(target)) not in SIBLINGS]
    assert not upward, f"{module} ({layer_of(module)}) imports a layer above it: {upward}"


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):]
                                                                 + [module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, stack + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_modules_stay_small(module):
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"


def test_each_layer_says_what_it_owns_and_may_import():
    for package in set(LAYERS) - {"entry", "base"}:
        doc = ast.get_docstring(ast.parse((HARNESS / package / "__init__.py").read_text()))
        assert doc and "import" in doc, f"harness/{package}/__init__.py: say what it may import"


MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_functions_fit_on_a_screen(module):
    tree = ast.parse(modules()[module].read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


SIM_AND_PAYLOADS = sorted([*(HARNESS.parent / "sim").rglob("*.py"),
                           *(HARNESS.parent / "payloads").rglob("*.py")])


@pytest.mark.parametrize("path", SIM_AND_PAYLOADS, ids=lambda p: str(p.relative_to(HARNESS.parent)))
def test_the_simulator_and_payloads_stay_small_too(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES})"
