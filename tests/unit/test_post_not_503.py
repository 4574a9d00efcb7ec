"""PostNot503: the connector proxy's readiness by its answers (issue 8, item 4)."""
from __future__ import annotations

import http.server
import threading

import pytest

from harness.servers.server import PostNot503, http_session


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
    rule = PostNot503(f"http://127.0.0.1:{proxy.server_port}/v1/chat/completions", 5)
    with http_session() as session:
        met, why = rule.check(None, session)
    assert (met, why) == (ready, f"HTTP {answer}")
    assert _Proxy.bodies == [b"{}"]  # a bare object: a ready proxy rejects it, runs nothing
    assert rule.describe() == f"POST {rule.url} -> not 503"


def test_nobody_listening_is_not_ready(proxy):
    port = proxy.server_port
    proxy.shutdown()
    proxy.server_close()
    with http_session() as session:
        rule = PostNot503(f"http://127.0.0.1:{port}/v1/chat/completions", 5)
        met, why = rule.check(None, session)
    assert not met and why == "ConnectionError"
