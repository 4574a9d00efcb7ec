"""SIMULATED vLLM Mooncake connector proxy (`mooncake_connector_proxy.py` of vLLM >= 0.16).

Not vLLM's code: an imitation of what the harness sees of it.

* CLI: `--prefill URL [BOOTSTRAP_PORT|none]` (repeatable), `--decode URL` (repeatable),
  `--host` (127.0.0.1), `--port` (8000). Anything else is a usage error (exit 2), as there.
* It binds and prints `Got N prefill clients and M decode clients.` and uvicorn's start-up
  lines at once, then, in the background, waits for every prefill: `GET URL/health` answers
  200, then `GET http://<prefill host>:<bootstrap port, 8998>/query` gives its engine ids
  (`Inited prefiller URL with dp_size=N`). Only then does it print
  `All prefiller instances are ready.`; until then requests answer 503. It has no health route.
* `POST /v1/chat/completions` and `/v1/completions`: the prefill first, with
  `kv_transfer_params={"do_remote_decode": true, "do_remote_prefill": false, "transfer_id": T}`,
  `stream=false`, `max_tokens=1`; then the decode with `{"do_remote_decode": false,
  "do_remote_prefill": true, "remote_bootstrap_addr": "http://<prefill host>:<bootstrap port>",
  "remote_engine_id": E, "transfer_id": T}`; the decode's answer (streamed when asked) is the
  answer, as vLLM's `StreamingResponse`: 200 and a chunked body, sent before the decode
  answers, so a decode that fails leaves a body cut off (no final chunk). A prefill that fails
  is only logged, as vLLM's unawaited prefill task is (the simulator sends the two in turn).
* `HARNESS_SIM_PROXY_SILENT=1`: the shape of vLLM's older copy: no ready line (it logs it
  through a logger with no handler) and no 503 (it learns its prefillers before it serves);
  only its answers tell that it is up.
* Faults for component `proxy` (HARNESS_SIM_COMPONENT=proxy): crash, hang, die-after-ready,
  wrong-answer, http-500, with the simulated servers' meaning.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.client import HTTPResponse
from typing import Any

from harness_sim import api, faults
from harness_sim.answers import WRONG
from harness_sim.console import say
from harness_sim.engine import EngineHandler
from harness_sim.serving import (
    TAG,
    Stopper,
    announce,
    bind,
    die_once_ready,
    say_uvicorn_starting,
    serving,
    startup_fault,
    usage_error,
)
from harness_sim.wiring import QuietHTTPServer, get_json, http_url

DEFAULT_BOOTSTRAP_PORT = 8998
READY_LINE = "All prefiller instances are ready."
SILENT_ENV = "HARNESS_SIM_PROXY_SILENT"
POLL_S = 0.2                  # how often a prefill is asked again while it is not up
UPSTREAM_TIMEOUT_S = 300.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


@dataclass
class Prefiller:
    url: str
    bootstrap_addr: str
    engine_ids: dict[int, str] = field(default_factory=dict)


@dataclass
class ProxyState:
    prefill: list[Prefiller]
    decode: list[str]
    faults: set[str]
    ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _prefill_turn: Any = None
    _decode_turn: Any = None

    def next_pair(self) -> tuple[Prefiller, int, str]:
        """Round robin: (prefiller, its data-parallel rank, decode URL)."""
        with self._lock:
            if self._prefill_turn is None:
                self._prefill_turn = itertools.cycle(
                    [(p, rank) for p in self.prefill for rank in sorted(p.engine_ids)])
                self._decode_turn = itertools.cycle(self.decode)
            prefiller, rank = next(self._prefill_turn)
            return prefiller, rank, next(self._decode_turn)


# --- command line -------------------------------------------------------------------------

def _host_of(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise ValueError(f"not an http URL: {url!r}")
    return host


def parse_proxy_args(argv: list[str]) -> argparse.Namespace:
    """The real proxy's command line; `.prefill` is [(url, bootstrap_addr)], `.decode` [url]."""
    p = argparse.ArgumentParser(prog="mooncake_connector_proxy.py",
                                description="harness SIMULATOR of vLLM's Mooncake connector "
                                            "proxy", allow_abbrev=False)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prefill", nargs="+", action="append", dest="prefill_raw",
                   metavar=("URL", "BOOTSTRAP_PORT"), default=[])
    p.add_argument("--decode", nargs=1, action="append", dest="decode_raw", metavar="URL",
                   default=[])
    args = p.parse_args(argv)
    if not args.prefill_raw or not args.decode_raw:
        p.error("at least one --prefill URL and one --decode URL are required")
    args.prefill = []
    for raw in args.prefill_raw:
        if len(raw) > 2:
            p.error(f"--prefill takes URL [BOOTSTRAP_PORT], got {shlex.join(raw)}")
        url = raw[0].rstrip("/")
        port_text = raw[1] if len(raw) == 2 else "none"
        if port_text.lower() == "none":
            port = DEFAULT_BOOTSTRAP_PORT
        elif port_text.isdigit():
            port = int(port_text)
        else:
            p.error(f"invalid bootstrap port {port_text!r}: must be a number or 'none'")
        try:
            args.prefill.append((url, http_url(_host_of(url), port)))
        except ValueError as exc:
            p.error(str(exc))
    args.decode = [raw[0].rstrip("/") for raw in args.decode_raw]
    return args


# --- readiness: every prefill up and its bootstrap server known ---------------------------

def _why_not_ready(prefiller: Prefiller) -> str | None:
    """None once the prefill answers /health and its bootstrap server /query (recorded)."""
    try:
        status, _ = get_json(f"{prefiller.url}/health", timeout=2.0)
    except (OSError, ValueError) as exc:
        return f"GET {prefiller.url}/health failed: {getattr(exc, 'reason', exc)}"
    if status != 200:
        return f"GET {prefiller.url}/health answered HTTP {status}"
    query = f"{prefiller.bootstrap_addr}/query"
    try:
        status, engines = get_json(query, timeout=2.0)
    except (OSError, ValueError) as exc:
        return f"GET {query} failed: {getattr(exc, 'reason', exc)}"
    ids: dict[int, str] = {}
    if status == 200 and isinstance(engines, dict):
        try:
            ids = {int(rank): str(e["engine_id"]) for rank, e in engines.items()}
        except (KeyError, TypeError, ValueError):
            ids = {}
    if not ids:
        return f"GET {query} answered HTTP {status} without engine ids: {str(engines)[:200]}"
    prefiller.engine_ids = ids
    return None


def wait_for_prefillers(state: ProxyState, stopper: Stopper) -> None:
    """The background task: in order, each prefill up; then the ready line."""
    for prefiller in state.prefill:
        last = None
        while (reason := _why_not_ready(prefiller)) is not None:
            if reason != last:  # log each new reason once, not every poll
                say(f"{TAG} prefill {prefiller.url} not ready yet: {reason}")
                last = reason
            if stopper.wait(POLL_S):
                return
        say(f"Inited prefiller {prefiller.url} with dp_size={len(prefiller.engine_ids)}")
    state.ready.set()
    if "die-after-ready" not in state.faults:  # that one closes its listener first
        say_ready()


def older_copy() -> bool:
    """HARNESS_SIM_PROXY_SILENT=1: the shape of vLLM's older copy (in
    examples/online_serving/disaggregated_serving/): it logs its ready line through a logger
    with no handler, and it has no readiness of its own to answer 503 with."""
    return os.environ.get(SILENT_ENV, "").strip().lower() in ("1", "true", "yes")


def say_ready() -> None:
    """The ready line (none from the older copy)."""
    if not older_copy():
        say(READY_LINE)


# --- requests -----------------------------------------------------------------------------

def _headers(request_id: str, dp_rank: int | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    if dp_rank is not None:
        headers["X-data-parallel-rank"] = str(dp_rank)
    return headers


def _open(url: str, body: dict[str, Any], headers: dict[str, str]) -> HTTPResponse:
    """POST; returns the open response (2xx) or raises ApiError 502 naming the upstream."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers=headers)
    try:
        return _OPENER.open(request, timeout=UPSTREAM_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise api.ApiError(502, f"{url} answered HTTP {exc.code}: {str(detail)[:500]}",
                           "BadGatewayError") from None
    except (OSError, ValueError) as exc:
        raise api.ApiError(502, f"{url} unreachable: {getattr(exc, 'reason', exc)}",
                           "BadGatewayError") from None


def prefill_body(body: dict[str, Any], transfer_id: str) -> dict[str, Any]:
    out = dict(body, stream=False, max_tokens=1,
               kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False,
                                   "transfer_id": transfer_id})
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("stream_options", None)
    return out


def decode_body(body: dict[str, Any], prefiller: Prefiller, dp_rank: int,
                transfer_id: str) -> dict[str, Any]:
    return dict(body, kv_transfer_params={
        "do_remote_decode": False, "do_remote_prefill": True,
        "remote_bootstrap_addr": prefiller.bootstrap_addr,
        "remote_engine_id": prefiller.engine_ids[dp_rank], "transfer_id": transfer_id})


def make_wrong(data: bytes) -> bytes:
    """The `wrong-answer` fault: every choice's text becomes `I do not know.` (JSON or SSE)."""
    faults.played_once("proxy", "wrong-answer", f"rewriting every answer to {WRONG!r}")
    def one(text: bytes) -> bytes:
        try:
            obj = json.loads(text)
        except ValueError:
            return text
        for choice in obj.get("choices", []) if isinstance(obj, dict) else []:
            if isinstance(choice.get("message"), dict):
                choice["message"]["content"] = WRONG
            if isinstance(choice.get("delta"), dict) and choice["delta"].get("content"):
                choice["delta"]["content"] = WRONG
            if "text" in choice:
                choice["text"] = WRONG
        return json.dumps(obj).encode()

    if data.lstrip().startswith(b"data:"):
        return b"\n".join(b"data: " + one(line[5:].strip())
                          if line.startswith(b"data:") and line.strip() != b"data: [DONE]"
                          else line for line in data.split(b"\n"))
    return one(data)


class ProxyHandler(EngineHandler):
    """Body parsing, error objects and the access log are the simulated engine's."""

    server: ProxyServer  # type: ignore[assignment]

    def _routes(self) -> dict[tuple[str, str], str]:
        return {("POST", "/v1/chat/completions"): "forward",
                ("POST", "/v1/completions"): "forward"}

    def route_forward(self, raw: bytes) -> None:
        state = self.server.state
        if not state.ready.is_set():
            raise api.ApiError(503, "Service Unavailable: not every prefiller is ready",
                               "ServiceUnavailable")
        if "http-500" in state.faults:
            faults.played_once("proxy", "http-500", "answering HTTP 500")
            raise api.ApiError(500, "simulated fault http-500 (HARNESS_SIM_FAULTS)",
                               "InternalServerError")
        path = self.path.split("?", 1)[0]
        body = self._json_object(raw)
        request_id = str(uuid.uuid4())
        transfer_id = f"xfer-{request_id}"
        prefiller, dp_rank, decode_url = state.next_pair()
        try:  # vLLM's proxy does not await its prefill task: a failure there is only logged
            with _open(prefiller.url + path, prefill_body(body, transfer_id),
                       _headers(request_id, dp_rank)) as answer:
                answer.read()
        except api.ApiError as exc:
            say(f"Task exception was never retrieved: {exc}")
        # Like vLLM's StreamingResponse: 200 goes out before the decode answers, and the
        # decode's bytes follow as a chunked body, whatever `stream` asked for.
        self._start_chunked()
        try:
            with _open(decode_url + path, decode_body(body, prefiller, dp_rank, transfer_id),
                       _headers(request_id)) as answer:
                say(f"{TAG} {request_id}: prefill {prefiller.url} -> decode {decode_url}: "
                    f"HTTP {answer.status}")
                data = answer.read()  # the simulated engines send a stream in one go
        except api.ApiError as exc:  # the body breaks off: no final chunk, the socket closes
            say(f"ERROR:    Exception in ASGI application ({exc})")
            self.close_connection = True
            return
        self._chunk(make_wrong(data) if "wrong-answer" in state.faults else data)
        self._chunk(b"")

    def _start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


class ProxyServer(QuietHTTPServer):
    def __init__(self, host: str, port: int, state: ProxyState) -> None:
        self.state = state
        super().__init__(host, port, ProxyHandler)


def run(argv: list[str]) -> int:
    stopper = announce("mooncake_connector_proxy.py", "vLLM's proxy", argv)
    args = parse_proxy_args(argv)
    try:
        component = faults.own_component()
        active = faults.own_faults()
    except ValueError as exc:
        return usage_error(exc)
    say(f"{TAG} component={component or '-'} faults={','.join(sorted(active)) or '-'}")
    fault_exit = startup_fault(active, component, stopper)
    if fault_exit is not None:
        return fault_exit
    state = ProxyState([Prefiller(url, addr) for url, addr in args.prefill], args.decode, active)
    older = older_copy()
    if older:  # it learns its prefillers before it serves: never a 503, and no ready line
        wait_for_prefillers(state, stopper)
        if stopper.is_set():
            return stopper.farewell()
    servers = bind([(f"HTTP port {args.host}:{args.port}",
                     lambda: ProxyServer(args.host, args.port, state))])
    if servers is None:
        return faults.EXIT_CRASH
    with serving(servers):
        say_uvicorn_starting()
        say(f"Got {len(state.prefill)} prefill clients and {len(state.decode)} decode clients.")
        if not older:
            threading.Thread(target=wait_for_prefillers, args=(state, stopper), daemon=True,
                             name="prefiller-info").start()
        say("INFO:     Application startup complete.")
        say(f"INFO:     Uvicorn running on {http_url(args.host, servers[0].server_port)} "
            "(Press CTRL+C to quit)")
        if "die-after-ready" in active:
            return _die_once_ready(state, servers, stopper, component)
        stopper.wait()
        code = stopper.farewell()
        say("INFO:     Shutting down")
        say("INFO:     Application shutdown complete.")
        say(f"INFO:     Finished server process [{os.getpid()}]")
        return code


def _die_once_ready(state: ProxyState, servers: list[QuietHTTPServer], stopper: Stopper,
                    component: str | None) -> int:
    """`die-after-ready`: once every prefiller is ready, the listener closes, then the ready line
    is written and the proxy exits 3, so no request can slip in between: whoever sees the line
    finds a proxy that is gone."""
    while not state.ready.is_set():
        if stopper.wait(0.05):
            return stopper.farewell()
    return die_once_ready(servers, say_ready, component)


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)
