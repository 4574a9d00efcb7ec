"""`nox -s mutants` measures what SCOPE (tests/mutants.py) names. A function renamed or moved
would silently drop out of the measurement; here it fails instead, naming the pattern."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

from tests import mutants

ROOT = Path(__file__).resolve().parents[2]


def functions(path: Path) -> set[str]:
    """`name` for module-level functions, `Class.name` for methods."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            found |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return found


@pytest.mark.parametrize("path", sorted(mutants.SCOPE))
def test_every_scope_pattern_names_a_function_that_exists(path):
    assert (ROOT / path).is_file(), f"{path} is gone: update SCOPE in tests/mutants.py"
    defined = functions(ROOT / path)
    for pattern in mutants.SCOPE[path]:
        assert any(fnmatch.fnmatchcase(name, pattern) for name in defined), (
            f"{path}: {pattern!r} matches no function any more: update SCOPE")


def test_mutant_names_map_back_to_functions():
    assert mutants.function_of("harness.servers.server.xǁServerǁ_wait__mutmut_3") == "Server._wait"
    assert mutants.function_of("harness.settings.x__parse__mutmut_12") == "_parse"
    assert (mutants.function_of("harness.results.outcome.x_utc_timestamp__mutmut_1")
            == "utc_timestamp")
    globs = mutants.mutant_globs("harness/servers/server.py",
                                 ("Server.wait_ready", "log_line", "*"))
    assert globs == ["harness.servers.server.xǁServerǁwait_ready__mutmut_*",
                     "harness.servers.server.x_log_line__mutmut_*", "harness.servers.server.*"]
