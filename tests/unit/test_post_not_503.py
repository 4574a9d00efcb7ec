"""PostNot503: the connector proxy's readiness by its answers (issue 8, item 4)."""
from __future__ import annotations

import http.server
import threading

import pytest

from pathlib import PurePosixPath

from harness.servers.server import PostNot503, Server, http_session


def proxy_at(port: int) -> Server:
    """The server the rule asks for its URL (never started: the rule only posts to it)."""
    return Server("proxy", None, [], "case", PurePosixPath("/proxy.log"), [],
                  address="127.0.0.1", port=port)


class _Proxy(http.server.BaseHTTPRequestHandler):
    answer = 503
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(self.answer)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("answer,ready", [(503, False), (400, True), (500, True), (200, True),
                                          (404, True)])
def test_anything_but_503_is_ready(proxy, answer, ready):
    _Proxy.answer, _Proxy.bodies = answer, []
    rule = PostNot503("/v1/chat/completions", 5)
    with http_session() as session:
        met, why = rule.check(proxy_at(proxy.server_port), session)
    assert (met, why) == (ready, f"HTTP {answer}")
    assert _Proxy.bodies == [b"{}"]  # a bare object: a ready proxy rejects it, runs nothing
    assert rule.describe() == "POST /v1/chat/completions -> not 503"


def test_nobody_listening_is_not_ready(proxy):
    port = proxy.server_port
    proxy.shutdown()
    proxy.server_close()
    with http_session() as session:
        rule = PostNot503("/v1/chat/completions", 5)
        met, why = rule.check(proxy_at(port), session)
    assert not met and why == "ConnectionError"
