"""The Mooncake pre-flight payload (payloads/preflight/mooncake_preflight.py) with the real
Mooncake CPU build: a ladder of sizes written and read back between two TransferEngines, every
byte checked, figures per size; and a build whose engine does not import, named."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.simproc import ROOT

pytestmark = pytest.mark.integration
PAYLOAD = ROOT / "payloads" / "preflight" / "mooncake_preflight.py"


def preflight(*args: str, env: dict | None = None) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(PAYLOAD), *args], capture_output=True,
                          text=True, timeout=120, env=env)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_ladder_of_sizes_goes_both_ways_and_arrives_whole():
    import mooncake.engine  # noqa: F401 - the CPU build, from the demo extra: never skipped
    code, result = preflight("--memory", "cpu", "--sizes", "4096,1048576,16777216")
    assert code == 0 and result["ok"], result
    assert (result["protocol"], result["memory"]) == ("tcp", "cpu")
    assert result["build"].startswith("mooncake-transfer-engine")
    assert [row["bytes"] for row in result["sizes"]] == [4096, 1048576, 16777216]
    for row in result["sizes"]:
        assert row["write_gbps"] > 0 and row["read_gbps"] > 0 and row["write_ms"] > 0


def test_an_engine_that_does_not_import_is_named(tmp_path):
    fake = tmp_path / "mooncake"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "engine.py").write_text("raise ImportError('libcuda.so.1: cannot open shared "
                                    "object file')\n")
    code, result = preflight("--memory", "cpu", env={"PYTHONPATH": str(tmp_path),
                                                     "PATH": "/usr/bin:/bin"})
    assert code == 1 and result["ok"] is False
    assert result["error"].startswith("mooncake.engine does not import")
    assert "libcuda.so.1" in result["error"]
