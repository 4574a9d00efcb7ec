"""The verdict before the harness can run: `Fail` for the asked cases, from the standard library.

The nox sessions install the harness before running it; a failed or killed `pip install` must not
leave a reused checkout's older `Pass` standing. So the noxfile calls `mark_unfinished` with nox's
own interpreter first, where the harness's dependencies (requests, docker, ...) may be missing:
this module reads the cases' names, groups and order from `cases/*.py` with `ast` instead of
importing them. `tests/unit/test_verdict.py` checks it agrees with the real registry.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from harness.errors import SettingsError
from harness.groups import groups_for, run_order
from harness.layout import Layout
from harness.results.outcome import write_run_summary, write_unfinished
from harness.results.summary import failed_cases, read_run_summary



def declared_cases(cases_dir: Path) -> list[tuple[str, str, int]]:
    """(name, group, order) of each `CASE = Case(name, group, kind, order, ...)` in cases_dir."""
    found = []
    for path in sorted(cases_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CASE"
                                                     for t in node.targets)
                    and isinstance(node.value, ast.Call)):
                args = _case_args(node.value, constants)
                if args:
                    found.append(args)
    return found


def _case_args(call: ast.Call, constants: dict) -> tuple[str, str, int] | None:
    def value(expr: ast.expr | None):
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Name):
            return constants.get(expr.id)
        return None

    named = {k.arg: k.value for k in call.keywords}
    fields = ("name", "group", "kind", "order")
    values = [value(call.args[i] if i < len(call.args) else named.get(f))
              for i, f in enumerate(fields)]
    name, group, _, order = values
    if isinstance(name, str) and isinstance(group, str) and isinstance(order, int):
        return name, group, order
    return None


def asked_cases(root: Path, command: str, args: list[str]) -> list[str]:
    """The case names a harness command asks for (`single NAME...`, `group G`, `demo`,
    `rerun`: those the last run summary does not record as passed)."""
    if command == "rerun":
        summary = last_summary(root)
        return failed_cases(summary) if summary else []
    declared = declared_cases(root / "cases")
    names = {name for name, _, _ in declared}
    if command == "single":
        bare = [Path(a.strip()).name.removesuffix(".sh").removesuffix(".py") for a in args]
        return [name for name in bare if name in names]
    wanted = groups_for("SGLANG" if command == "demo" else (args[0] if args else ""))
    return [name for name, _, _ in sorted((c for c in declared if c[1] in wanted),
                                          key=lambda c: run_order(c[1], c[2]))]


def last_summary(root: Path) -> dict | None:
    """The run summary of `root`'s tree, None where there is none that can be read (the
    harness says why in one line when it runs)."""
    try:
        return read_run_summary(Layout.at(root))
    except SettingsError:
        return None


def mark_unfinished(root: Path, command: str, args: list[str]) -> list[str]:
    """Write `Fail` ("run did not finish") for every case the command asks for, and a run
    summary (with its JUnit file) saying so; a rerun's summary keeps the other cases."""
    layout = Layout.at(root)
    cases = asked_cases(root, command, args)
    if not cases:
        return cases
    groups = {name: group for name, group, _ in declared_cases(root / "cases")}
    results = [write_unfinished(layout, case, groups.get(case, "")) for case in cases]
    earlier = last_summary(root) if command == "rerun" else None
    label = str(earlier.get("group") or "") if earlier else " ".join([command, *args])
    write_run_summary(layout, results, group=label, pr_id=os.environ.get("PR_ID", ""),
                      prep_s={}, duration_s=0.0, finished=False,
                      earlier=earlier["cases"] if earlier else None)
    return cases
