"""The Mooncake pre-flight payload (payloads/preflight/mooncake_preflight.py) with the real
Mooncake CPU build: a ladder of sizes written and read back between two TransferEngines, every
byte checked, figures per size; and a build whose engine does not import, named."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simproc import ROOT, free_port

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


def broken_engine(tmp_path, error: str) -> dict:
    """An environment whose `mooncake.engine` raises `error` on import."""
    fake = tmp_path / "mooncake"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "engine.py").write_text(f"raise {error}\n")
    return {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}


def test_a_missing_system_library_names_the_package_that_provides_it(tmp_path):
    env = broken_engine(tmp_path, "ImportError('libibverbs.so.1: cannot open shared object "
                                  "file: No such file or directory')")
    code, result = preflight("--memory", "cpu", env=env)
    assert code == 1 and result["ok"] is False and result["stage"] == "import"
    assert result["error"].startswith("mooncake.engine cannot load (mooncake-transfer-engine")
    assert "libibverbs.so.1" in result["error"] and "install libibverbs1" in result["error"]
    assert "pip install" not in result["error"]  # the wheel is there; a pip line would mislead


def test_a_missing_module_names_the_pip_line(tmp_path):
    env = broken_engine(tmp_path, "ModuleNotFoundError(\"No module named 'mooncake.engine'\")")
    code, result = preflight("--memory", "cpu", env=env)
    assert code == 1 and result["stage"] == "import"
    assert "pip install mooncake-transfer-engine-non-cuda" in result["error"]


def test_the_target_may_run_apart_and_the_store_puts_there_and_gets_here(tmp_path):
    """As the run does it across two hosts: the target started on its own (127.0.0.2), the
    initiator told where it is, a mooncake_master for the store."""
    master_port, metadata_port = free_port(), free_port()
    master = subprocess.Popen(
        [str(Path(sys.executable).parent / "mooncake_master"), f"--rpc_port={master_port}",
         "--rpc_address=127.0.0.1", "--enable_http_metadata_server=true",
         f"--http_metadata_server_port={metadata_port}", "--http_metadata_server_host=127.0.0.1",
         f"--metrics_port={free_port()}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    store = ["--store", f"127.0.0.1:{master_port}",
             "--metadata", f"http://127.0.0.1:{metadata_port}/metadata"]
    log = tmp_path / "target.log"
    control = free_port()
    with open(log, "wb") as out:
        target = subprocess.Popen([sys.executable, str(PAYLOAD), "--role", "target", "--host",
                                   "127.0.0.2", "--memory", "cpu", "--sizes", "4096,1048576",
                                   "--control-port", str(control), "--log-file", str(log),
                                   *store], stdout=out, stderr=subprocess.STDOUT)
    try:
        code, result = preflight("--memory", "cpu", "--sizes", "4096,1048576", "--target",
                                 f"127.0.0.2:{control}", *store)
        assert code == 0 and result["ok"], (result, log.read_text()[-2000:])
        assert result["target"].startswith("127.0.0.2:")
        assert result["store"]["bytes"] == 1 << 20 and result["store"]["get_ms"] > 0
        assert target.wait(30) == 0  # told to quit at the end
    finally:
        for process in (target, master):
            if process.poll() is None:
                process.kill()
            process.wait()
