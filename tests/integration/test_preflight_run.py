"""The Mooncake pre-flight as a step of the run (issue 16), through the real CLI on the demo
cluster with the real Mooncake CPU build and mooncake_master: its figures when it passes; every
asked case `Fail` with `Mooncake pre-flight: ...` and no model loaded when Mooncake does not
load, the master exits, or the target's control port is taken; a skip said aloud otherwise."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.simproc import demo_env

pytestmark = pytest.mark.integration
DOUBLE, SINGLE = "test_1p1d_erdma", "test_moe_mooncake"


def run(project: Path, tmp_path: Path, *cases: str, path_first: str = "",
        **env: str) -> tuple[int, str, float]:
    """`python -m harness single CASES` with the demo's settings on this worker's addresses;
    `path_first`: a folder searched before any other for commands."""
    started = time.monotonic()
    settings = demo_env(tmp_path / "remote-host" / "project", relocated=True, **env)
    if path_first:
        settings["PATH"] = f"{path_first}:{settings['PATH']}"
    done = subprocess.run([sys.executable, "-m", "harness", "single", *cases], cwd=project,
                          env=settings,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    return done.returncode, done.stdout, time.monotonic() - started


def case_summary(project: Path, case: str) -> dict:
    return json.loads((project / "run/logs" / case / "case_summary.json").read_text())


def found(project: Path) -> dict:
    return json.loads((project / "run/logs/mooncake_preflight/preflight.json").read_text())


def broken_mooncake(tmp_path: Path) -> str:
    """A PYTHONPATH whose `mooncake.engine` cannot find its RDMA library, as on a machine
    without libibverbs1."""
    package = tmp_path / "broken" / "mooncake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text(
        "raise ImportError('libibverbs.so.1: cannot open shared object file: No such file or "
        "directory')\n")
    return str(package.parent)


def assert_failed_fast(project: Path, out: str, seconds: float, *cases: str) -> str:
    for case in cases:
        summary = case_summary(project, case)
        assert summary["status"] == "Fail", summary
        assert summary["reason"].startswith("Mooncake pre-flight: "), summary["reason"]
        assert "=== " + case not in out  # never started: no model loaded
    assert not list((project / "run/logs").glob("*/*/sglang_server_*.log"))
    assert seconds < 120, seconds
    return case_summary(project, cases[0])["reason"]


def test_figures_of_a_two_host_run(project, tmp_path):
    code, out, _ = run(project, tmp_path, DOUBLE)
    assert code == 0, out[-3000:]
    result = found(project)
    assert result["ok"] and result["protocol"] == "tcp" and result["memory"] == "cpu"
    local, remote = result["route"].split(" -> ")
    assert local.endswith(".1") and remote.endswith(".2") and local != remote
    assert [row["bytes"] for row in result["sizes"]] == [4096, 1 << 20, 64 << 20]
    assert result["store"]["bytes"] == 1 << 20 and result["store"]["get_ms"] > 0
    assert out.count("Mooncake pre-flight: mooncake-transfer-engine-non-cuda") == 1, out
    assert " 64 MiB  write " in out and "store 1 MiB: put " in out
    # the same figures in the run summary, junit.xml (its own suite) and the report
    logs = project / "run/logs"
    assert json.loads((logs / "run_summary.json").read_text())["mooncake_preflight"] == result
    suite = ET.parse(logs / "junit.xml").getroot().find("testsuite[@name='mooncake_preflight']")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    plotted = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert float(plotted[f"write_gbps_{64 << 20}"]) == result["sizes"][2]["write_gbps"]
    assert suite.find("testcase").get("name") == "mooncake_preflight"
    page = (logs / "report.html").read_text()
    assert "<h2>Mooncake pre-flight</h2>" in page and "67,108,864 B" in page
    # the remote side's log came home with the local ones
    logs = {p.name for p in (project / "run/logs/mooncake_preflight").iterdir()}
    assert {"target.log", "initiator.log", "mooncake_master.log"} <= logs, logs


def test_a_single_host_run_checks_two_engines_on_the_one_host(project, tmp_path):
    code, out, _ = run(project, tmp_path, SINGLE, PREFLIGHT_MAX_BYTES="1048576")
    assert code == 0, out[-3000:]
    local, remote = found(project)["route"].split(" -> ")
    assert local == remote
    assert [row["bytes"] for row in found(project)["sizes"]] == [4096, 1 << 20]


def test_mooncake_that_does_not_load_fails_every_case_at_once_naming_the_cause(project,
                                                                               tmp_path):
    code, out, seconds = run(project, tmp_path, DOUBLE, SINGLE, HARNESS_SIM_MOONCAKE="required",
                             PYTHONPATH=broken_mooncake(tmp_path))
    assert code == 1, out[-3000:]
    reason = assert_failed_fast(project, out, seconds, DOUBLE, SINGLE)
    assert "mooncake.engine cannot load (mooncake-transfer-engine-non-cuda" in reason, reason
    assert "libibverbs.so.1" in reason and "install libibverbs1" in reason, reason
    assert found(project)["error"] == reason
    junit = ET.parse(project / "run/logs/junit.xml").getroot()
    failure = junit.find("testsuite[@name='mooncake_preflight']/testcase/failure")
    assert failure is not None and failure.get("message") == reason


def test_without_a_requirement_mooncake_that_does_not_load_is_a_skip_said_with_its_cause(
        project, tmp_path):
    code, out, _ = run(project, tmp_path, SINGLE, PYTHONPATH=broken_mooncake(tmp_path))
    assert code == 0, out[-3000:]
    assert "Mooncake pre-flight: skipped: Mooncake cannot load on local" in out
    assert "install libibverbs1" in found(project)["skipped"]


def test_preflight_false_skips_it_and_says_so(project, tmp_path):
    code, out, _ = run(project, tmp_path, SINGLE, PREFLIGHT="false")
    assert code == 0, out[-3000:]
    assert "Mooncake pre-flight: skipped (PREFLIGHT=false)" in out
    assert found(project)["skipped"] == "PREFLIGHT=false" and not found(project)["ok"]


def test_the_simulators_corrupt_fault_fails_the_preflight_on_the_first_write(project,
                                                                             tmp_path):
    code, out, seconds = run(project, tmp_path, DOUBLE, HARNESS_SIM_FAULTS="mooncake:corrupt")
    assert code == 1, out[-3000:]
    reason = assert_failed_fast(project, out, seconds, DOUBLE)
    assert "the 4096 bytes of the write with 127.0." in reason, reason
    assert reason.endswith("arrived changed"), reason


def test_a_master_that_exits_fails_the_run_with_its_log(project, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    master = bin_dir / "mooncake_master"
    master.write_text("#!/bin/sh\necho 'F1208 master.cpp:99] bad flag: metrics_host' >&2\n"
                      "exit 3\n")
    master.chmod(0o755)
    code, out, seconds = run(project, tmp_path, DOUBLE, path_first=str(bin_dir))
    assert code == 1, out[-3000:]
    reason = assert_failed_fast(project, out, seconds, DOUBLE)
    assert "mooncake_master exited with status 3" in reason, reason
    assert "bad flag: metrics_host" in out  # its log tail, on the console


def test_ports_in_use_do_not_stop_it_it_takes_free_ones(project, tmp_path):
    """What a fixed port would meet: the old ports held (as by a foreign listener, or a port
    an interrupted run left in TIME_WAIT) on both hosts' addresses."""
    from tests.simproc import worker_addresses
    held = [socket.create_server((address, port)) for address in worker_addresses()
            for port in range(15551, 15555)]
    try:
        code, out, _ = run(project, tmp_path, DOUBLE)
    finally:
        for sock in held:
            sock.close()
    assert code == 0, out[-3000:]
    assert found(project)["ok"]
