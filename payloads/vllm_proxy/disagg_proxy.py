#!/usr/bin/env python3
"""Prefill/decode proxy for vLLM's MooncakeConnector, for vLLM images older than 0.16.0.

The Mooncake E2E harness's own small proxy (vLLM >= 0.16.0 ships its own Mooncake connector
proxy, which the harness uses instead). Standard library only, so it runs in any image.

    python3 -u disagg_proxy.py --prefill http://P:8010 --decode http://D:8020 \
        --host 0.0.0.0 --port 8000

`POST /v1/chat/completions` and `POST /v1/completions`:

1. the request goes to a prefill server (round robin) with `max_tokens=1`, `stream=false`
   and `kv_transfer_params={"do_remote_decode": true, "do_remote_prefill": false,
   "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
   "remote_port": null}`;
2. the same request goes to a decode server (round robin) carrying the `kv_transfer_params`
   the prefill answered (where the decode fetches the KV cache from);
3. the decode's answer is the answer (streamed through when the request says `stream: true`).

An upstream that fails or cannot be reached gives HTTP 502 with an OpenAI-style error object
naming the upstream URL and its status (`upstream`, `upstream_status`). A prefill answer
without `kv_transfer_params` is an error too: the prefill server is not a MooncakeConnector
`kv_producer`, and the decode would silently compute everything itself.

`GET /health` (and `/healthcheck`, the path vLLM's toy proxy served) answers 200 once the
proxy listens; it does not probe the upstreams. The proxy prints
`INFO:     Application startup complete.` when it listens, one line per request, and exits 0
on SIGTERM/SIGINT. Upstream requests never go through an http(s)_proxy of the environment.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http import HTTPStatus
from http.client import HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROUTES = ("/v1/chat/completions", "/v1/completions")
HEALTH_ROUTES = ("/health", "/healthcheck")
STARTUP_COMPLETE = "INFO:     Application startup complete."
MAX_BODY = 64 * 1024 * 1024
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}
# The upstreams are cluster-internal addresses: an http_proxy meant for downloads must not apply.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PRINT_LOCK = threading.Lock()


def say(line: str) -> None:
    """One whole line on stdout, flushed (the harness follows the log for the ready line)."""
    with _PRINT_LOCK:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


# --- the pure parts -----------------------------------------------------------------------

def normalise_url(url: str) -> str:
    """`host:port` or `http://host:port/` -> `http://host:port`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url!r}")
    return url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="disagg_proxy.py", allow_abbrev=False,
        description="Prefill/decode proxy for vLLM's MooncakeConnector (vLLM < 0.16.0).")
    p.add_argument("--prefill", nargs="+", action="extend", required=True, metavar="URL",
                   help="prefill (kv_producer) server URL(s), e.g. http://10.0.0.2:8010")
    p.add_argument("--decode", nargs="+", action="extend", required=True, metavar="URL",
                   help="decode (kv_consumer) server URL(s), e.g. http://10.0.0.1:8020")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for each upstream answer (default 600)")
    args = p.parse_args(argv)
    try:
        args.prefill = [normalise_url(u) for u in args.prefill]
        args.decode = [normalise_url(u) for u in args.decode]
    except ValueError as exc:
        p.error(str(exc))
    return args


def prefill_request(body: dict[str, Any]) -> dict[str, Any]:
    """The prefill's copy of a request: one token, no streaming, produce KV for a remote decode."""
    out = dict(body, max_tokens=1, stream=False,
               kv_transfer_params=dict(PREFILL_KV_TRANSFER_PARAMS))
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("stream_options", None)
    return out


def decode_request(body: dict[str, Any], kv_transfer_params: dict[str, Any]) -> dict[str, Any]:
    """The decode's copy: the client's request plus where the prefilled KV cache lives."""
    return dict(body, kv_transfer_params=kv_transfer_params)


def error_object(status: int, message: str, kind: str = "BadRequestError",
                 upstream: str | None = None, upstream_status: int | None = None
                 ) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "error", "message": message, "type": kind,
                            "param": None, "code": status}
    if upstream is not None:
        body.update(upstream=upstream, upstream_status=upstream_status)
    return body


class ProxyError(Exception):
    """A request the proxy answers with an error object."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError",
                 upstream: str | None = None, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind
        self.body = error_object(status, message, kind, upstream, upstream_status)


def _upstream_message(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict):
        inner = data.get("error") if isinstance(data.get("error"), dict) else data
        for key in ("message", "detail"):
            if inner.get(key):
                return str(inner[key])[:500]
    return text[:500]


def post(role: str, url: str, body: dict[str, Any], headers: dict[str, str],
         timeout: float) -> HTTPResponse:
    """POST JSON to an upstream; the open 2xx response, or ProxyError 502 naming it."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers=headers)
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        message = _upstream_message(exc.read())
        raise ProxyError(502, f"{role} {url} answered HTTP {exc.code}: {message}",
                         "BadGatewayError", url, exc.code) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProxyError(502, f"{role} {url} unreachable: {reason}", "BadGatewayError",
                         url, None) from None


# --- the server ---------------------------------------------------------------------------

class RoundRobin:
    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self._turn = itertools.cycle(self.urls)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return next(self._turn)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in HEALTH_ROUTES:
            self._send_json(200, {"status": "ok", "prefill": self.server.prefill.urls,
                                  "decode": self.server.decode.urls})
        elif path in ROUTES:
            self._send_json(405, error_object(405, f"Method Not Allowed: GET {path}"))
        else:
            self._send_json(404, error_object(404, f"Not Found: {path}", "NotFoundError"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ROUTES:
            self._send_json(404, error_object(404, f"Not Found: {path}", "NotFoundError"))
            return
        try:
            self._forward(path, self._read_json())
        except ProxyError as exc:
            say(f"ERROR:    {path}: {exc}")
            self._send_json(exc.status, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away
        except Exception as exc:  # noqa: BLE001 (a proxy bug must still answer)
            say(f"ERROR:    {path}: proxy error {exc!r}")
            self._send_json(500, error_object(500, f"proxy error: {exc!r}",
                                              "InternalServerError"))

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise ProxyError(413, f"request body too large ({length} bytes)")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw.decode("utf-8") if raw else "")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "request body must be a JSON object")
        return body

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        api_key = os.environ.get("OPENAI_API_KEY")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _forward(self, path: str, body: dict[str, Any]) -> None:
        server = self.server
        request_id = self.headers.get("X-Request-Id") or str(uuid.uuid4())
        headers = self._headers(request_id)
        prefill_url = server.prefill.next() + path
        started = time.monotonic()
        with post("prefill", prefill_url, prefill_request(body), headers,
                  server.upstream_timeout) as answer:
            raw = answer.read()
        try:
            kv_params = json.loads(raw).get("kv_transfer_params")
        except (ValueError, AttributeError):
            kv_params = None
        if not isinstance(kv_params, dict) or not kv_params:
            raise ProxyError(502, f"prefill {prefill_url} answered without kv_transfer_params: "
                             "is it a vLLM server started with --kv-transfer-config "
                             "'{\"kv_connector\":\"MooncakeConnector\",\"kv_role\":"
                             "\"kv_producer\"}'?", "BadGatewayError", prefill_url, 200)
        prefilled = time.monotonic()
        decode_url = server.decode.next() + path
        with post("decode", decode_url, decode_request(body, kv_params), headers,
                  server.upstream_timeout) as answer:
            content_type = answer.headers.get("Content-Type", "application/json")
            if body.get("stream"):
                self._stream(answer, content_type)
            else:
                self._send_bytes(200, answer.read(), content_type)
        say(f"INFO:     request {request_id}: prefill {prefill_url} "
            f"{prefilled - started:.3f}s, decode {decode_url} "
            f"{time.monotonic() - prefilled:.3f}s (remote KV at "
            f"{kv_params.get('remote_host')}:{kv_params.get('remote_port')})")

    def _stream(self, answer: HTTPResponse, content_type: str) -> None:
        """Pass the decode's stream through as it comes; the connection then closes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        while True:
            chunk = answer.read1(65536)
            if not chunk:
                break
            self.wfile.write(chunk)
            self.wfile.flush()

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, body: Any) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            phrase = HTTPStatus(int(code)).phrase
        except ValueError:
            phrase = ""
        host, port = self.client_address[:2]
        say(f'INFO:     {host}:{port} - "{self.requestline}" {code} {phrase}'.rstrip())

    def log_message(self, format: str, *args: Any) -> None:
        say(f"WARNING:  {self.client_address[0]} - {format % args}")


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True      # a stop must not wait for idle keep-alive connections
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, prefill: list[str], decode: list[str],
                 timeout: float) -> None:
        self.prefill, self.decode = RoundRobin(prefill), RoundRobin(decode)
        self.upstream_timeout = timeout
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ProxyHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn) that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class StopSignal:
    """SIGTERM/SIGINT -> a self-pipe the main thread waits on (the handler takes no lock)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.name = ""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.name = signal.Signals(signum).name
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass  # already signalled

    def wait(self) -> str:
        select.select([self._read], [], [])
        return self.name


def main(argv: list[str] | None = None) -> int:
    stop = StopSignal()  # first: a stop at any moment must be a clean exit 0
    args = parse_args(argv)
    try:
        server = ProxyServer(args.host, args.port, args.prefill, args.decode, args.timeout)
    except OSError as exc:
        say(f"ERROR:    cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="disagg-proxy", daemon=True)
    thread.start()
    say(f"INFO:     Started server process [{os.getpid()}]")
    say(f"INFO:     disagg_proxy: prefill {' '.join(args.prefill)}; decode "
        f"{' '.join(args.decode)}")
    say(STARTUP_COMPLETE)
    say(f"INFO:     listening on http://{args.host}:{server.server_port} (GET /health)")
    name = stop.wait()
    say(f"INFO:     received {name}, shutting down")
    server.shutdown()
    server.server_close()
    say(f"INFO:     Finished server process [{os.getpid()}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
