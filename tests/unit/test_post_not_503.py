"""PostNot503: the connector proxy's readiness by its answers (issue 8, item 4)."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def serving(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy():
    with serving(_Proxy) as server:
        yield server


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


class _CutOff(http.server.BaseHTTPRequestHandler):
    """What vLLM's connector proxy does once ready with a request its decode rejects: 200 and
    the start of a chunked body, then the connection closes (its StreamingResponse raised)."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\n{\"id\"\r\n")
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_off():
    with serving(_CutOff) as server:
        yield server


def test_a_ready_proxy_that_cuts_its_body_off_is_ready_by_its_status_line(cut_off):
    with http_session() as session:
        met, why = PostNot503("/v1/chat/completions", 5).check(proxy_at(cut_off.server_port),
                                                              session)
    assert (met, why) == (True, "HTTP 200")


def test_a_request_whose_body_is_cut_off_fails_naming_it(cut_off, tmp_path):
    from harness.errors import CaseFailed
    from harness.run.answers import post
    url = f"http://127.0.0.1:{cut_off.server_port}/v1/chat/completions"
    with pytest.raises(CaseFailed) as info:
        post(url, {"model": "m"}, 5, tmp_path / "curl_response.log", server="proxy")
    assert "answered HTTP 200, then its body was cut off" in str(info.value)
    assert "cut off" in (tmp_path / "curl_response.log").read_text()
