"""The suite's own hang catcher must not fire before a test's own waits do.

pytest-timeout (pyproject.toml) kills a test with a stack dump and no message of the test's own;
a test that waits up to 900 s for a group run must be allowed those 900 s and report its own
failure. Every literal wait in tests/ (`timeout=N`, `@pytest.mark.timeout(N)`, `..._TIMEOUT_S = N`)
is found here and compared with the global limit.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the harness supports 3.10; its tests run where tomllib exists
    tomllib = pytest.importorskip("tomli")

TESTS = Path(__file__).resolve().parents[1]
PYPROJECT = TESTS.parent / "pyproject.toml"
WAITS = re.compile(r"(?:\btimeout\s*=\s*|mark\.timeout\(\s*|_TIMEOUT_S\s*=\s*)(\d+(?:\.\d+)?)\b")
# Room for a test's fixtures and teardown around its longest wait.
MARGIN_S = 60


def global_timeout() -> float:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
    return float(config["timeout"])


def literal_waits() -> list[tuple[float, str]]:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in WAITS.finditer(line):
                found.append((float(match.group(1)), f"{path.relative_to(TESTS)}:{number}"))
    return found


def test_the_global_timeout_outlasts_every_wait_of_a_test():
    limit = global_timeout()
    waits = literal_waits()
    assert max(w for w, _ in waits) >= 600  # the scan does find the long ones
    too_long = [(w, where) for w, where in waits if w + MARGIN_S > limit]
    assert not too_long, f"pytest's timeout {limit:.0f}s is not above these waits: {too_long}"


def test_the_scan_sees_what_it_should():
    assert WAITS.search("subprocess.run(argv, timeout=900)").group(1) == "900"
    assert WAITS.search("@pytest.mark.timeout(600)").group(1) == "600"
    assert WAITS.search("RUN_TIMEOUT_S = 180").group(1) == "180"
    assert WAITS.search("timeout = 2.5").group(1) == "2.5"
