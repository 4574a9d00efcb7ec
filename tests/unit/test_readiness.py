"""Server readiness on real processes (bash, on this host): ready means the rules were met AND
the process the harness started is still there; a death is reported at once, not at the timeout.

No fixed ports, no Docker: each server is a short bash script started through `HostNode.spawn`
exactly as the harness starts engines; every group is SIGKILLed at the end of its test.
"""
from __future__ import annotations

import http.server
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from harness import waiting
from harness.errors import NotReady, ServerExited
from harness.hosts.nodes import local_group_alive
from harness.results.timeline import Timeline, read_spans
from harness.servers.server import (SGLANG_READY, AnyOf, HttpOk, LogLines, Server, log_line,
                                    sglang_ready, start_all)
from tests.simproc import free_port, wait_for

READY = "READY-LINE"
# Far above any detection delay below: a test that hits it has found a missed death.
LONG_S = 30.0
# A death must be reported within this (the alive check runs every second; a loaded machine).
REPORTED_S = 15.0


def make(node, servers, name: str, script: str, rules, port: int | None = None) -> Server:
    server = Server(name, node, ["bash", "-c", script], "case",
                    node.layout.case_logs("case") / f"{name}.log", rules,
                    address="127.0.0.1", port=port)
    servers.append(server)
    return server


def log_text(server: Server) -> str:
    path = Path(str(server.node.on_host(server.log)))
    return path.read_text() if path.exists() else ""


def timed(call) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def test_ready_once_the_line_appears(node, servers, caplog):
    caplog.set_level(logging.INFO, logger="harness.servers.server")
    server = make(node, servers, "s", f"sleep 0.3; echo '{READY}'; exec sleep 60",
                  [log_line(READY, LONG_S)])
    assert timed(lambda: server.start().wait_ready()) < REPORTED_S
    assert local_group_alive(server.proc.pgid)
    said = [re.fullmatch(r"local: s ready in (\d+\.\d)s", r.getMessage())
            for r in caplog.records]
    assert [float(m[1]) for m in said if m][0] < REPORTED_S, caplog.text
    server.stop(5)
    assert server.proc is None


def test_exit_before_ready_is_reported_at_once_with_its_status_and_log(node, servers):
    server = make(node, servers, "decode", "echo starting; echo 'CUDA out of memory' >&2; exit 3",
                  [log_line(READY, LONG_S)])
    server.start()
    start = time.monotonic()
    with pytest.raises(ServerExited) as err:
        server.wait_ready()
    assert time.monotonic() - start < REPORTED_S
    said = re.fullmatch(r"decode exited with status 3 after (\d+\.\d)s while waiting for log "
                        rf"line '{READY}'", err.value.message)
    assert said and float(said[1]) < REPORTED_S, err.value.message
    assert "CUDA out of memory" in err.value.log_tail
    assert err.value.server == "decode" and err.value.host == "local"
    assert err.value.hint == f"see {server.log}"


def test_a_group_killed_while_waiting_fails_readiness(node, servers):
    """SIGKILL takes the spawn wrapper too, so no exit status is written: only the liveness
    check can see it."""
    server = make(node, servers, "prefill", "echo starting; exec sleep 60",
                  [log_line(READY, LONG_S)])
    server.start()
    assert wait_for(lambda: "starting" in log_text(server), 10)
    killer = threading.Timer(0.5, os.killpg, (server.proc.pgid, signal.SIGKILL))
    killer.start()
    start = time.monotonic()
    try:
        with pytest.raises(ServerExited) as err:
            server.wait_ready()
    finally:
        killer.cancel()
    assert time.monotonic() - start < REPORTED_S
    assert err.value.message == f"prefill is gone (killed?) while waiting for log line '{READY}'"
    assert "starting" in err.value.log_tail
    assert (err.value.host, err.value.server) == ("local", "prefill")
    assert not Path(str(node.on_host(server.proc.exit_file))).exists()


def test_rules_met_by_a_dead_process_are_not_ready(node, servers):
    """The ready line is in the log but the process that wrote it is gone: not ready."""
    server = make(node, servers, "s", f"echo '{READY}'; exec sleep 60",
                  [log_line(READY, LONG_S)])
    server.start()
    assert wait_for(lambda: READY in log_text(server), 10)
    os.killpg(server.proc.pgid, signal.SIGKILL)
    assert wait_for(lambda: not local_group_alive(server.proc.pgid), 10)
    with pytest.raises(ServerExited) as err:
        server.wait_ready()
    assert err.value.message == "s is gone right after its readiness rules were met"
    assert READY in err.value.log_tail
    assert (err.value.host, err.value.server) == ("local", "s")


def test_an_exit_right_after_the_rules_are_met_is_not_ready(node, servers):
    server = make(node, servers, "s", f"echo '{READY}'; exit 0", [log_line(READY, LONG_S)])
    server.start()
    assert wait_for(lambda: Path(str(node.on_host(server.proc.exit_file))).exists(), 10)
    with pytest.raises(ServerExited) as err:
        server.wait_ready()
    assert re.fullmatch(r"s exited with status 0 after \d+\.\ds while waiting for its "
                        r"readiness rules", err.value.message), err.value.message
    assert READY in err.value.log_tail and err.value.server == "s"


def test_liveness_is_probed_about_once_a_second_not_every_poll(node, servers, monkeypatch):
    """On the remote host each probe is an SSH command: once a second, not every 0.1 s poll."""
    probes = []
    real_alive = node.alive
    monkeypatch.setattr(node, "alive", lambda pgid: probes.append(pgid) or real_alive(pgid))
    server = make(node, servers, "s", f"sleep 2.5; echo '{READY}'; exec sleep 60",
                  [log_line(READY, LONG_S)])
    waited = timed(lambda: server.start().wait_ready())
    assert 1 <= len(probes) <= waited + 2, (len(probes), waited)
    assert set(probes) == {server.proc.pgid}


def test_a_hang_times_out_naming_what_was_awaited(node, servers):
    server = make(node, servers, "s", "echo 'loading weights'; exec sleep 60",
                  [log_line("never printed", 0.5)])
    server.start()
    with pytest.raises(NotReady) as err:
        server.wait_ready()
    assert 0.5 <= err.value.waited_s < REPORTED_S
    assert err.value.awaited == "log line 'never printed'"
    assert err.value.last_error == "seen /never\\ printed/ 0/1", err.value.last_error
    assert "loading weights" in err.value.log_tail
    assert err.value.hint == f"see {server.log}"
    assert (err.value.host, err.value.server) == ("local", "s")


def test_a_line_needed_twice_is_not_enough_once(node, servers):
    twice = LogLines(((r"worker \d ok", 2),), 1.0)
    once = make(node, servers, "once", "echo 'worker 1 ok'; exec sleep 60", [twice]).start()
    assert wait_for(lambda: "worker 1 ok" in log_text(once), 10)   # written before the wait
    with pytest.raises(NotReady) as err:
        once.wait_ready()
    assert err.value.last_error == r"seen /worker \d ok/ 1/2"
    assert err.value.awaited == r"/worker \d ok/ x2"
    three = LogLines(((r"worker \d ok", 2), ("loaded", 1)), 0.3)
    three_server = make(node, servers, "three", "echo 'worker 1 ok'; exec sleep 60",
                        [three]).start()
    assert wait_for(lambda: "worker 1 ok" in log_text(three_server), 10)
    with pytest.raises(NotReady) as err:
        three_server.wait_ready()
    assert err.value.last_error == r"seen /worker \d ok/ 1/2, /loaded/ 0/1"
    both = make(node, servers, "both", "echo 'worker 1 ok'; echo 'worker 2 ok'; exec sleep 60",
                [twice])
    both.start().wait_ready()


def test_rules_are_met_in_order(node, servers):
    server = make(node, servers, "s", f"echo '{READY}'; exec sleep 60",
                  [log_line(READY, LONG_S), log_line("second rule", 0.5)])
    with pytest.raises(NotReady) as err:
        server.start().wait_ready()
    assert "second rule" in err.value.awaited


class _Status:
    code = 503


@pytest.fixture
def http_status():
    """A local HTTP endpoint answering `http_status.code` (on a free port)."""
    state = _Status()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(state.code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/health"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_http_rule_needs_a_200(node, servers, http_status):
    server = make(node, servers, "s", "exec sleep 60", [HttpOk(http_status.url, 0.5)])
    with pytest.raises(NotReady) as err:
        server.start().wait_ready()
    assert "HTTP 503" in str(err.value) and http_status.url in err.value.awaited
    http_status.code = 200
    server.wait_ready()


def test_any_of_is_met_by_either_rule(node, servers, http_status):
    rule = AnyOf((log_line("never printed", 5), HttpOk(http_status.url, 5)), 0.5)
    server = make(node, servers, "s", "exec sleep 60", [rule])
    with pytest.raises(NotReady):
        server.start().wait_ready()
    http_status.code = 200
    server.wait_ready()
    by_line = make(node, servers, "t", "echo 'never printed'; exec sleep 60",
                   [AnyOf((log_line("never printed", 5), HttpOk("http://127.0.0.1:9/x", 5)),
                          LONG_S)])
    by_line.start().wait_ready()


def test_sglang_rules_are_the_ready_line_then_health(http_status):
    first, second = sglang_ready(240, 120)
    assert SGLANG_READY in first.describe() and first.timeout_s == 240
    assert second.path == "/health" and second.timeout_s == 120


def test_start_all_reports_a_death_without_waiting_for_the_slow_one(node, servers):
    slow = make(node, servers, "slow", "exec sleep 60", [log_line(READY, LONG_S)])
    dies = make(node, servers, "dies", "sleep 0.3; exit 1", [log_line(READY, LONG_S)])
    start = time.monotonic()
    with pytest.raises(ServerExited) as err:
        start_all([slow, dies])
    assert time.monotonic() - start < REPORTED_S
    assert "dies" in str(err.value) and "status 1" in str(err.value)


def test_the_timeline_tells_ready_and_how_a_wait_failed(node, servers, tmp_path):
    """Each server's span: marked ready when it is; when not, the first line of why."""
    timeline = Timeline.fresh(tmp_path / "timeline.jsonl", "run-1")

    def server(name: str, script: str, rules) -> Server:
        made = Server(name, node, ["bash", "-c", script], "case",
                      node.layout.case_logs("case") / f"{name}.log", rules, timeline=timeline)
        servers.append(made)
        return made.start()

    ready = server("ready", f"echo '{READY}'; exec sleep 60", [log_line(READY, LONG_S)])
    ready.wait_ready()
    hung = server("hung", "exec sleep 60", [log_line("never printed", 0.3)])
    with pytest.raises(NotReady) as err:
        hung.wait_ready()
    for each in (ready, hung):
        each.stop(5)
    spans = {s["name"]: s for s in read_spans(tmp_path / "timeline.jsonl")}
    assert spans["ready"]["outcome"] == "ok" and spans["ready"]["ready"] is not None
    assert spans["hung"]["outcome"] == "failed" and spans["hung"]["ready"] is None
    assert spans["hung"]["detail"] == err.value.message.splitlines()[0]
    assert "never printed" in spans["hung"]["detail"]


def test_a_log_is_followed_even_for_a_server_this_harness_did_not_start(node, servers):
    """A log rule works on a Server object made for a log that is already being written
    (follow_log before any start()), counting each line once across polls."""
    server = make(node, servers, "adopted", "exec sleep 60", [])
    path = Path(str(node.on_host(server.log)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("worker 1 ok\nworker 2 o")
    assert server.follow_log([r"worker \d ok"]) == {r"worker \d ok": 1}
    with open(path, "a") as log:
        log.write("k\n")
    assert server.follow_log([r"worker \d ok"]) == {r"worker \d ok": 2}


def test_a_server_not_started_here_is_ready_when_its_rules_are_met(node, servers, http_status):
    """Nothing of the harness's own to be alive or exited: the rules alone decide."""
    elsewhere = make(node, servers, "elsewhere", "exec sleep 60", [HttpOk(http_status.url, 0.3)])
    with pytest.raises(NotReady) as err:
        elsewhere.wait_ready()
    assert err.value.last_error == "HTTP 503"
    http_status.code = 200
    elsewhere.wait_ready()
    assert elsewhere.proc is None


def test_a_long_start_says_what_the_server_said_last(node, servers, caplog, monkeypatch):
    """The progress lines of a server's wait carry its log's last line, not the rule's
    why-not: what a person watching a slow start wants to see."""
    monkeypatch.setattr(waiting, "PROGRESS_EVERY_S", 0.2)
    server = make(node, servers, "decode", "echo 'loading weights 3/8'; exec sleep 60",
                  [log_line("never printed", 1.0)])
    server.start()
    assert wait_for(lambda: "loading weights" in log_text(server), 10)
    with caplog.at_level(logging.INFO, logger="harness.waiting"), pytest.raises(NotReady):
        server.wait_ready()
    said = [r.getMessage() for r in caplog.records if r.name == "harness.waiting"]
    assert said, caplog.text
    assert all(m.startswith("still waiting for decode on local (log line 'never printed'): ")
               and m.endswith("; log: loading weights 3/8") for m in said), said
