"""Server lifecycle on a real process: the simulated SGLang server, run directly on this host."""
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.errors import NotReady, ServerExited
from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode, local_group_alive
from harness.servers.server import Server, http_session, sglang_ready, start_all, wait_all
from tests.simproc import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def node(tmp_path):
    return HostNode(LocalHost("local", "127.0.0.1"), tmp_path)


def sim_server(node, name, *, faults="", component=None, ready_s=20.0, startup_s=0.2):
    port = free_port()
    env = {"HARNESS_SIM": "true", "HARNESS_SIM_STARTUP_S": str(startup_s),
           "HARNESS_SIM_FAULTS": faults}
    if component:
        env["HARNESS_SIM_COMPONENT"] = component
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", "sim/model",
            "--host", "127.0.0.1", "--port", str(port)]
    server = Server(name, node, argv, "case", node.layout.case_logs("case") / f"{name}.log",
                    sglang_ready(ready_s, ready_s), address="127.0.0.1", port=port, env=env,
                    pythonpath=[str(ROOT / "sim" / "site")])
    return server


def start_failing(servers, error, match=None) -> pytest.ExceptionInfo:
    """start_all, which must raise `error`; every server is stopped afterwards either way."""
    try:
        with pytest.raises(error, match=match) as err:
            start_all(servers)
    finally:
        for server in servers:
            server.stop(5)
    return err


def test_ready_then_serves_then_stops(node):
    server = sim_server(node, "prefill")
    try:
        start_all([server])
        answer = http_session().post(f"http://127.0.0.1:{server.port}/generate",
                                     json={"text": "Let me tell you a short story "}, timeout=10)
        assert answer.status_code == 200 and answer.json()["text"]
        pgid = server.proc.pgid
        assert local_group_alive(pgid)
        pid_file = Path(node.layout.pid_file("case", "prefill"))
        assert pid_file.read_text().split()[0] == str(pgid)   # "pid starttime"
    finally:
        started = time.monotonic()
        server.stop(5)
    assert time.monotonic() - started < 3
    assert not local_group_alive(pgid)
    assert not pid_file.exists()


def test_crash_during_startup_is_reported_at_once_with_log_tail(node):
    server = sim_server(node, "decode", faults="decode:crash", component="decode", ready_s=240)
    started = time.monotonic()
    err = start_failing([server], ServerExited)
    assert time.monotonic() - started < 10
    assert "decode" in str(err.value) and "exited with status 1" in str(err.value)
    assert err.value.log_tail  # the last lines of its log are shown


def test_hang_times_out_naming_what_was_awaited(node):
    server = sim_server(node, "prefill", faults="prefill:hang", component="prefill", ready_s=1.5)
    err = start_failing([server], NotReady)
    assert "fired up and ready to roll" in str(err.value)
    assert err.value.server == "prefill" and err.value.host == "local"


def test_parallel_wait_fails_on_the_first_dead_server(node):
    good = sim_server(node, "prefill", startup_s=30)
    bad = sim_server(node, "decode", faults="decode:crash", component="decode")
    started = time.monotonic()
    start_failing([good, bad], ServerExited, match="decode")
    assert time.monotonic() - started < 10


def test_faults_only_touch_the_named_component(node):
    server = sim_server(node, "prefill", faults="decode:crash", component="prefill")
    try:
        start_all([server])
        wait_all([server])
    finally:
        server.stop(5)


def test_port_already_taken_is_reported_with_the_servers_own_words(node):
    server = sim_server(node, "prefill", ready_s=240)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        started = time.monotonic()
        err = start_failing([server], ServerExited)
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{server.port}" in err.value.log_tail
    assert "prefill" in str(err.value)
