"""Readiness rules one by one, on real processes and real sockets of this host (no fixed ports):
what each rule accepts, what it refuses and what its refusal says; the router rule refuses a
port held by somebody else; a cancel stops a wait at once; `wait_all` fails on the first death.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from harness.errors import Interrupted, NotReady, ServerExited
from harness.servers.server import (_OWNS_PORT, APP_STARTUP, AnyOf, HttpOk, LogLines, OwnsPort,
                                    app_startup_ready,
                                    log_line, router_ready, start_all, wait_all)
from harness.waiting import Cancel, GroupFailed
from tests.simproc import free_port, wait_for
from tests.unit.test_readiness import LONG_S, REPORTED_S, log_text, make


ACTIVATED = "Activated 1 worker(s) (marked as healthy)"
TOKENIZER = "Successfully loaded tokenizer"


def router_script(port: int, workers: int, listen: bool) -> str:
    lines = "; ".join([f"echo '{ACTIVATED}'"] * workers + [f"echo '{TOKENIZER}'"])
    serve = (f"exec python3 -m http.server --bind 127.0.0.1 {port}" if listen
             else "exec sleep 60")
    return f"{lines}; {serve}"


def test_rule_descriptions_say_what_is_awaited():
    assert log_line("x y", 1).describe() == "log line 'x y'"
    assert log_line("x", 1, count=2).describe() == "log line 'x' x2"
    assert LogLines((("a", 1), ("b+", 3)), 1).describe() == "/a/ and /b+/ x3"
    assert HttpOk("/health", 1).describe() == "GET /health -> 200"
    assert AnyOf((log_line("x", 1), HttpOk("/r", 1)), 1).describe() == (
        "log line 'x' or GET /r -> 200")
    assert OwnsPort(1).describe() == "its own process listening on its port"


def test_app_startup_rules_are_the_startup_line_then_health():
    line, health = app_startup_ready(240, 120)
    assert line.describe() == f"log line {APP_STARTUP!r}" and line.timeout_s == 240
    assert health.path == "/health" and health.timeout_s == 120


def test_router_rules_need_every_worker_and_the_tokenizer_then_its_own_port():
    either, owns = router_ready(2, 120)
    lines, readiness = either.rules
    assert either.timeout_s == 120 and lines.timeout_s == 120
    assert dict(lines.patterns)[r"Activated 1 worker\(s\) \(marked as healthy\)"] == 2
    assert sum(n for _, n in lines.patterns) == 3
    assert lines.describe() == ("2 x 'Activated 1 worker(s) (marked as healthy)' and the "
                                "tokenizer loaded")
    assert readiness.path == "/readiness" and readiness.timeout_s == 120
    assert isinstance(owns, OwnsPort) and owns.timeout_s == 120


def test_router_listening_on_its_port_is_ready(node, servers):
    port = free_port()
    router = make(node, servers, "router", router_script(port, 2, listen=True),
                  router_ready(2, LONG_S), port=port)
    router.start().wait_ready()


def test_router_whose_port_is_held_by_another_process_is_not_ready(node, servers):
    """The log lines are there, /readiness may even answer, but the listener is not ours."""
    port = free_port()
    foreign = socket.create_server(("127.0.0.1", port))
    try:
        rules = router_ready(1, 1.0)
        router = make(node, servers, "router", router_script(port, 1, listen=False), rules,
                      port=port)
        router.start()
        # its lines are written before the wait (a loaded machine must not time out the first
        # rule instead): what is left to fail is the port
        assert wait_for(lambda: TOKENIZER in log_text(router), 10)
        with pytest.raises(NotReady) as err:
            router.wait_ready()
    finally:
        foreign.close()
    assert err.value.awaited == "its own process listening on its port"
    assert err.value.last_error == f"port {port} is not held by router"


def test_the_workers_must_all_be_activated(node, servers):
    port = free_port()
    router = make(node, servers, "router", router_script(port, 1, listen=True),
                  router_ready(2, 1.0), port=port)
    router.start()
    assert wait_for(lambda: TOKENIZER in log_text(router), 10)
    with pytest.raises(NotReady) as err:
        router.wait_ready()
    assert "seen /Activated" in err.value.last_error and "1/2" in err.value.last_error
    assert "ConnectionError" in err.value.last_error or "HTTP" in err.value.last_error


def test_own_port_rule_before_start_is_not_met(node, servers):
    server = make(node, servers, "s", "exec sleep 60", [OwnsPort(1)], port=free_port())
    assert server.ready[0].check(server, None) == (False, "not started")


def test_a_refused_connection_is_not_ready(node, servers):
    url = f"http://127.0.0.1:{free_port()}/health"
    server = make(node, servers, "s", "exec sleep 60", [HttpOk(url, 0.5)])
    with pytest.raises(NotReady) as err:
        server.start().wait_ready()
    assert err.value.last_error == "ConnectionError"


def test_an_endpoint_that_never_answers_does_not_block_the_wait(node, servers):
    """Each probe has its own short timeout, so the rule's deadline still holds."""
    silent = socket.create_server(("127.0.0.1", free_port()))
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
    server = make(node, servers, "s", "exec sleep 60", [HttpOk(url, 0.5)])
    start = time.monotonic()
    try:
        with pytest.raises(NotReady) as err:
            server.start().wait_ready()
    finally:
        silent.close()
    assert time.monotonic() - start < REPORTED_S
    assert "Timeout" in err.value.last_error


def test_any_of_says_why_each_rule_is_not_met(node, servers):
    url = f"http://127.0.0.1:{free_port()}/readiness"
    rule = AnyOf((log_line("never printed", 5), HttpOk(url, 5)), 0.5)
    server = make(node, servers, "s", "exec sleep 60", [rule])
    with pytest.raises(NotReady) as err:
        server.start().wait_ready()
    assert err.value.last_error == r"seen /never\ printed/ 0/1; ConnectionError"


def test_a_cancel_stops_the_wait_at_once_naming_what_was_awaited(node, servers):
    cancel = Cancel()
    server = make(node, servers, "decode", "exec sleep 60", [log_line("never printed", LONG_S)])
    server.start()
    threading.Timer(0.3, cancel.set, ("SIGTERM",)).start()
    start = time.monotonic()
    with pytest.raises(Interrupted) as err:
        server.wait_ready(cancel)
    assert time.monotonic() - start < REPORTED_S
    assert str(err.value) == ("SIGTERM while waiting for decode on local "
                              "(log line 'never printed')")


def test_start_all_uses_the_first_servers_cancel(node, servers):
    first = make(node, servers, "a", "exec sleep 60", [log_line("never printed", LONG_S)])
    second = make(node, servers, "b", "exec sleep 60", [log_line("never printed", LONG_S)])
    first.cancel.set("stopped by the test")
    with pytest.raises(Interrupted):
        start_all([first, second])


def test_wait_all_fails_on_the_first_death_and_logs_which(node, servers, caplog):
    slow = make(node, servers, "slow", "exec sleep 60", [log_line("never printed", LONG_S)])
    dies = make(node, servers, "dies", "sleep 0.3; exit 2", [log_line("never printed", LONG_S)])
    slow.start()
    dies.start()
    start = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(ServerExited) as err:
        wait_all([slow, dies])
    assert time.monotonic() - start < REPORTED_S
    assert err.value.server == "dies" and "status 2" in err.value.message
    # a lone failure is told once, by whoever catches it, not by the fan-out as well
    assert not any(r.getMessage().startswith("server readiness: ") for r in caplog.records)


def test_wait_all_uses_the_first_servers_cancel(node, servers):
    first = make(node, servers, "a", "exec sleep 60", [log_line("never printed", LONG_S)])
    second = make(node, servers, "b", "exec sleep 60", [log_line("never printed", LONG_S)])
    first.start()
    second.start()
    first.cancel.set("stopped by the test")
    start = time.monotonic()
    with pytest.raises(Interrupted):
        wait_all([first, second])
    assert time.monotonic() - start < REPORTED_S


def test_wait_all_returns_when_every_server_is_ready(node, servers):
    both = [make(node, servers, name, "echo up; exec sleep 60", [log_line("up", LONG_S)])
            for name in ("a", "b")]
    for server in both:
        server.start()
    wait_all(both)
    wait_all(both, Cancel())


def test_start_all_leaves_telling_a_lone_failure_to_its_caller(node, servers, caplog):
    ok = make(node, servers, "ok", "exec sleep 60", [log_line("never printed", LONG_S)])
    dies = make(node, servers, "dies", "exit 1", [log_line("never printed", LONG_S)])
    with caplog.at_level(logging.ERROR), pytest.raises(ServerExited) as err:
        start_all([ok, dies])
    assert err.value.server == "dies"
    assert not any(r.getMessage().startswith("server start: ") for r in caplog.records)


def test_start_all_and_wait_all_follow_the_token_they_are_given(node, servers):
    """A token passed in (the case's, the run's) stops the waits, not only the servers' own."""
    stop = Cancel()
    stop.set("stopped by the case")
    starting = [make(node, servers, name, "exec sleep 60", [log_line("never printed", LONG_S)])
                for name in ("a", "b")]
    start = time.monotonic()
    with pytest.raises(Interrupted, match="stopped by the case"):
        start_all(starting, stop)
    waiting_for = [make(node, servers, name, "exec sleep 60",
                        [log_line("never printed", LONG_S)]).start() for name in ("c", "d")]
    with pytest.raises(Interrupted, match="stopped by the case"):
        wait_all(waiting_for, stop)
    assert time.monotonic() - start < REPORTED_S


@pytest.mark.parametrize("together, what", [(start_all, "server start"),
                                            (wait_all, "server readiness")])
def test_several_failures_are_each_told_naming_the_step(node, servers, caplog, together, what):
    """Two servers declared with an HTTP rule but no port: each fails at its first poll."""
    broken = [make(node, servers, name, "exec sleep 60", [HttpOk("/health", LONG_S)])
              for name in ("prefill", "decode")]
    if together is wait_all:
        for server in broken:
            server.start()
    with caplog.at_level(logging.ERROR), pytest.raises(GroupFailed) as err:
        together(broken)
    assert sorted(map(str, err.value.errors)) == ["decode has no port, so no URL",
                                                  "prefill has no port, so no URL"]
    told = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert told == [f"{what}: ValueError('decode has no port, so no URL')",
                    f"{what}: ValueError('prefill has no port, so no URL')"]


def test_each_probe_of_the_port_is_bounded_in_time(node, servers, monkeypatch):
    """On the remote host the probe is an SSH command: a hung link must not outlast the rule."""
    limits = []
    real_exec = node.exec

    def exec_(argv, **kw):
        if _OWNS_PORT in argv:
            limits.append(kw.get("timeout"))
        return real_exec(argv, **kw)

    monkeypatch.setattr(node, "exec", exec_)
    port = free_port()
    router = make(node, servers, "router", router_script(port, 1, listen=True),
                  router_ready(1, LONG_S), port=port)
    router.start().wait_ready()
    assert limits and all(limit is not None and 0 < limit <= 60 for limit in limits), limits
