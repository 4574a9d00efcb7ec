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
import threading
import time
import urllib.parse
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from harness_sim.console import say

BOOTSTRAP_ROLE = "prefill-bootstrap"
PROBE_TIMEOUT_S = 2.0
KV_WAIT_S = 2.0   # how long a decode waits for an EPD prefill to have handled its room

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
    # uvicorn listens with a backlog of 2048; socketserver's 5 overflows when an eval sends
    # 16-64 requests at once on a busy machine, and a client then sees a connection reset.
    request_queue_size = 2048

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

class KvLedger:
    """Whether the KV a prefill hands over is good, per bootstrap room.

    A prefill with the `wrong-answer` fault always hands over bad KV. A language-only (EPD)
    prefill hands over bad KV for a request whose image embedding its encoder got wrong, so
    the decode must wait until that prefill has seen the room; any other prefill's KV is known
    up front."""

    def __init__(self, always_bad: bool = False, per_request: bool = False) -> None:
        self.always_bad, self.per_request = always_bad, per_request
        self._rooms: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, rooms: Any, bad: bool) -> None:
        quality = "bad" if bad or self.always_bad else "good"
        with self._lock:
            for room in rooms if isinstance(rooms, list) else [rooms]:
                if room is not None:
                    self._rooms[str(room)] = quality
            while len(self._rooms) > 4096:  # remember recent rooms only
                self._rooms.pop(next(iter(self._rooms)))

    def lookup(self, room: str) -> str | None:
        if self.always_bad:
            return "bad"
        if not self.per_request:
            return "good"
        with self._lock:
            return self._rooms.get(room)


class _BootstrapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BootstrapServer

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/health":
            status, body = 200, self.server.identity
        elif path == "/kv":
            room = urllib.parse.parse_qs(query).get("room", [""])[0]
            status, body = 200, {"room": room, "kv": self.server.kv.lookup(room)}
        else:
            status, body = 404, {"object": "error", "message": f"Not Found: {self.path}",
                                 "type": "NotFoundError", "param": None, "code": 404}
        send_json(self, status, body)

    def do_POST(self) -> None:
        """POST /kv/transfer: a decode asks for a room's KV (harness_sim.handoff.KvSender)."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        sender = self.server.kv_sender
        if self.path != "/kv/transfer" or sender is None:
            status, answer = 404, {"object": "error", "message": f"Not Found: {self.path}",
                                   "type": "NotFoundError", "param": None, "code": 404}
        else:
            status, answer = sender.handle(body if isinstance(body, dict) else {})
        send_json(self, status, answer)

    def log_message(self, format: str, *args: Any) -> None:
        say(f"INFO:     [bootstrap] {self.client_address[0]} - {format % args}")


class BootstrapServer(QuietHTTPServer):
    """The simulated prefill's disaggregation bootstrap server (GET /health identifies it)."""

    def __init__(self, host: str, port: int, http_port: int, model_path: str,
                 kv: KvLedger | None = None, kv_sender: Any = None) -> None:
        super().__init__(host, port, _BootstrapHandler)
        self.kv = kv or KvLedger()
        self.kv_sender = kv_sender  # harness_sim.handoff.KvSender: real KV transfers
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


def handed_over_kv(host: str, port: int, room: Any, wait_s: float = KV_WAIT_S) -> str:
    """`bad` when the prefill at host:port handed over bad KV for `room`, else `good` (also
    when it cannot tell: an unknown room after `wait_s`, a prefill without /kv)."""
    url = http_url(host, port, "/kv?" + urllib.parse.urlencode({"room": str(room)}))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status, body = get_json(url)
        except (OSError, ValueError):
            return "good"
        quality = body.get("kv") if status == 200 and isinstance(body, dict) else "good"
        if quality is not None or time.monotonic() >= deadline:
            return quality or "good"
        time.sleep(0.02)


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
