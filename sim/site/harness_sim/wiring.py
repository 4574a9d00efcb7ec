"""PD and EPD wiring: the prefill bootstrap server and the probes other servers use on it.

A simulated prefill server listens on its bootstrap port (SGLang's default 8998) as the
real one does; a simulated decode server answers only when the request's bootstrap fields
point at such a live server. A language-only prefill checks its encoder before it is ready
and asks it to /encode every request that carries an image. So wrong wiring fails the way
it would with real engines, instead of the simulator answering anyway.
"""
from __future__ import annotations

import json
import socket
import socketserver
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from harness_sim.console import say

BOOTSTRAP_ROLE = "prefill-bootstrap"
PROBE_TIMEOUT_S = 2.0

# Loopback-only simulator traffic must never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class QuietHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that binds without a reverse-DNS lookup.

    HTTPServer.server_bind calls socket.getfqdn(host), which can stall for seconds on a
    machine without DNS; the simulator must be ready within a fraction of a second.
    """

    daemon_threads = True      # a stop must not wait for idle keep-alive connections
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind (getfqdn); TCPServer's bind is all we need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def http_url(host: str, port: int, path: str = "") -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}{path}"


def _fetch_json(request: str | urllib.request.Request, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON or raw text), an HTTP error status included; OSError: no answer."""
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get_json(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, Any]:
    """GET url -> (status, parsed JSON or raw text); raises OSError when nothing answers."""
    return _fetch_json(url, timeout)


def post_json(url: str, body: Any, timeout: float = 10.0) -> tuple[int, Any]:
    """POST JSON -> (status, parsed JSON or raw text); raises OSError when nothing answers."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return _fetch_json(request, timeout)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    """Answer a request with a JSON body of known length (the connection stays usable)."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


# --- the prefill's bootstrap server -------------------------------------------------------

class _BootstrapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BootstrapServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            status, body = 200, self.server.identity
        else:
            status, body = 404, {"object": "error", "message": f"Not Found: {self.path}",
                                 "type": "NotFoundError", "param": None, "code": 404}
        send_json(self, status, body)

    def log_message(self, format: str, *args: Any) -> None:
        say(f"INFO:     [bootstrap] {self.client_address[0]} - {format % args}")


class BootstrapServer(QuietHTTPServer):
    """The simulated prefill's disaggregation bootstrap server (GET /health identifies it)."""

    def __init__(self, host: str, port: int, http_port: int, model_path: str) -> None:
        super().__init__(host, port, _BootstrapHandler)
        self.identity = {"status": "ok", "role": BOOTSTRAP_ROLE, "simulated": True,
                         "bootstrap_port": self.server_port, "http_port": http_port,
                         "model_path": model_path}


def probe_bootstrap(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when host:port is a live simulated prefill bootstrap server, else why not."""
    try:
        status, body = get_json(http_url(host, port, "/health"), timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET /health failed: {reason}"
    if status != 200:
        return f"GET /health answered HTTP {status}"
    if not isinstance(body, dict) or body.get("role") != BOOTSTRAP_ROLE:
        return "something answers there, but it is not a prefill bootstrap server"
    return None


# --- the encoder of an EPD prefill ----------------------------------------------------------

def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def probe_health(url: str, timeout: float = 1.0) -> str | None:
    """None when `url`/health answers 200, else why not."""
    try:
        status, _ = get_json(f"{normalise_url(url)}/health", timeout)
    except (OSError, ValueError) as exc:
        return f"GET /health failed: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"GET /health answered HTTP {status}"


class Stop(Protocol):
    """What waits can be cut short by (a threading.Event fits)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def wait_for_encoder(urls: list[str], timeout_s: float, stop: Stop) -> str | None:
    """Wait until one encoder URL answers /health; returns the URL, or None on timeout/stop."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        for url in urls:
            if probe_health(url) is None:
                return normalise_url(url)
        if time.monotonic() >= deadline or stop.wait(min(0.25, timeout_s)):
            return None
    return None
