"""The vLLM case's proxy: chosen by PEP 440, and ready without a line that may never come
(issue 8, items 3 and 4). The real CLI runs the VLLM group on the demo cluster (simulated vLLM,
real project proxy) and a person's checks are read from the run's logs.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cli import DEMO_SETTINGS

pytestmark = pytest.mark.integration
CASE = "test_vllm_1p1d_erdma"
MODEL_DIR = "deepseek-ai__DeepSeek-V2-Lite"
CONNECTOR_READY = "All prefiller instances are ready."
OWN_PROXY_MARK = "disagg_proxy.py"  # the launcher names the real program it runs
PROXY_WAIT_S = 30  # TIMEOUT_PROXY_S here: a wait for a line that never comes fails at this


def run_vllm_group(project: Path, **extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update({"REMOTE_TEST_DIR": str(project.parent / "remote-host" / "project"),
                "HARNESS_SIM_FAULTS": "", "TIMEOUT_STOP_S": "5",
                "TIMEOUT_PROXY_S": str(PROXY_WAIT_S),
                "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]})
    env.update(extra)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness", "group", "VLLM"], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=400)
    return done, time.monotonic() - started


def status(project: Path) -> str:
    return json.loads((project / f"run/logs/{CASE}/test_results.json").read_text())["status"]


def proxy_log(project: Path) -> str:
    return (project / f"run/logs/{CASE}/{MODEL_DIR}/proxy.log").read_text(errors="replace")


@pytest.mark.parametrize("version", ["0.16.0rc1", "0.16.0.dev5"])
def test_a_pre_release_of_0_16_takes_the_projects_own_proxy(project, version):
    done, _ = run_vllm_group(project, HARNESS_SIM_VLLM_VERSION=version)
    assert done.returncode == 0, done.stdout[-4000:]
    assert status(project) == "Pass"
    assert f"vLLM {version}: the project's own proxy" in done.stdout
    log = proxy_log(project)
    assert OWN_PROXY_MARK in log and "SIMULATED vLLM Mooncake connector proxy" not in log, log


def test_an_unreadable_version_fails_naming_what_was_read(project):
    done, _ = run_vllm_group(project, HARNESS_SIM_VLLM_VERSION="0.16.x-custom")
    assert done.returncode != 0
    assert status(project) == "Fail"
    assert "cannot read the vLLM version from '0.16.x-custom'" in done.stdout, done.stdout[-3000:]


def test_a_connector_proxy_that_never_prints_its_ready_line_is_ready_by_its_answers(project):
    done, took = run_vllm_group(project, HARNESS_SIM_VLLM_VERSION="0.17.0",
                                HARNESS_SIM_PROXY_SILENT="1")
    assert done.returncode == 0, done.stdout[-4000:]
    assert status(project) == "Pass"
    log = proxy_log(project)
    assert "SIMULATED vLLM Mooncake connector proxy" in log or "Inited prefiller" in log, log
    assert CONNECTOR_READY not in log, log
    # both models ran well inside one proxy wait: nobody waited the wait out
    assert took < 2 * PROXY_WAIT_S, took


class _Stranger(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_answer_from_a_stranger_on_the_proxy_port_is_not_the_proxy_ready(project):
    """Something else on port 8000 answering the probe with 400 must not pass for the proxy."""
    stranger = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), _Stranger)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    try:
        done, _ = run_vllm_group(project, HARNESS_SIM_VLLM_VERSION="0.17.0",
                                 HARNESS_SIM_PROXY_SILENT="1", TIMEOUT_PROXY_S="5")
    finally:
        stranger.shutdown()
        stranger.server_close()
    assert done.returncode != 0
    assert status(project) == "Fail"
    summary = json.loads((project / f"run/logs/{CASE}/case_summary.json").read_text())
    assert "start proxy" in summary["step"], summary
