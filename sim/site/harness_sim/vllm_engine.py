"""The simulated vLLM server: OpenAI routes plus the MooncakeConnector's PD wiring.

Wiring, taken seriously (SPEC section 9):

* a `kv_producer` (prefill) also runs the Mooncake bootstrap server on its host, port
  $VLLM_MOONCAKE_BOOTSTRAP_PORT (8998, as vLLM's): `GET /query` answers
  `{"<dp_rank>": {"engine_id": ...}}` (what vLLM's Mooncake proxy reads before it is ready),
  `GET /transfers/<id>` says whether this producer prefilled that request;
* a request with `kv_transfer_params.do_remote_decode=true` is a prefill for a remote
  decode: the producer records the transfer and answers with `kv_transfer_params` naming
  itself (`remote_host`, `remote_port` = its bootstrap port, `remote_engine_id`,
  `remote_block_ids`, `transfer_id`, `do_remote_prefill=true`);
* a `kv_consumer` (decode) answers only a request whose `kv_transfer_params` has
  `do_remote_prefill=true` and names a live producer (`remote_bootstrap_addr`, as vLLM >= 0.16's
  proxy sends, or `remote_host` + `remote_port`, as the prefill answers), whose engine id
  matches `remote_engine_id` and which prefilled `transfer_id` -- checked on every request
  (2 s). Anything else is HTTP 500 naming the problem.

A `wrong-answer` producer hands over "bad KV": the decode that loads it answers wrongly.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from harness_sim import api, faults, handoff
from harness_sim.answers import WRONG, answer_text, count_tokens, prompt_from_messages
from harness_sim.console import say
from harness_sim.engine import EngineHandler, EngineServer
from harness_sim.kv_transfer import TRANSFER_PATH, TransferError
from harness_sim.vllm_args import VllmArgs
from harness_sim.wiring import PROBE_TIMEOUT_S, QuietHTTPServer, get_json, http_url, send_json

DEFAULT_BOOTSTRAP_PORT = 8998     # vLLM's VLLM_MOONCAKE_BOOTSTRAP_PORT default
BOOTSTRAP_ROLE = "kv_producer-bootstrap"
BLOCK_TOKENS = 16                 # tokens per simulated KV block
MAX_TRANSFERS = 4096              # remembered prefills per producer
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def wrong_answer(_prompt: str) -> str:
    """What a `wrong-answer` server, or a decode that loaded bad KV, says to anything."""
    return WRONG


def advertised_host(host: str) -> str:
    """The address a producer names in kv_transfer_params (a wildcard bind is loopback here)."""
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


def _kv_params(body: Mapping[str, Any]) -> dict[str, Any]:
    params = body.get("kv_transfer_params")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise api.ApiError(400, f"kv_transfer_params must be an object, got {params!r}")
    return dict(params)


def producer_address(params: Mapping[str, Any]) -> tuple[str, int]:
    """(host, port) of the producer a decode request names; ApiError when it names none."""
    addr = params.get("remote_bootstrap_addr")
    if addr:
        parsed = urllib.parse.urlsplit(addr if "://" in str(addr) else f"http://{addr}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.hostname and port:
            return parsed.hostname, port
        raise api.ApiError(400, f"kv_transfer_params.remote_bootstrap_addr {addr!r} is not "
                           "host:port")
    host, port = params.get("remote_host"), params.get("remote_port")
    if not host or port in (None, ""):
        raise api.ApiError(500, "kv_consumer got kv_transfer_params without remote_bootstrap_addr "
                           "or remote_host/remote_port: it does not say which kv_producer holds "
                           f"the KV cache ({dict(params)})", "InternalServerError")
    try:
        return str(host), int(port)
    except (TypeError, ValueError):
        raise api.ApiError(400, f"kv_transfer_params.remote_port {port!r} is not a port") from None


@dataclass
class Transfer:
    transfer_id: str
    block_ids: list[int]
    wrong: bool                    # prefilled by a wrong-answer producer: the KV is bad
    created: float = field(default_factory=time.time)

    def as_dict(self, engine_id: str) -> dict[str, Any]:
        return {"transfer_id": self.transfer_id, "engine_id": engine_id,
                "block_ids": self.block_ids, "wrong": self.wrong, "simulated": True}


class TransferBook:
    """The prefills a producer did, by transfer id (bounded, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, Transfer] = OrderedDict()
        self._blocks = itertools.count(1)

    def record(self, transfer_id: str, tokens: int, wrong: bool) -> Transfer:
        with self._lock:
            blocks = [next(self._blocks) for _ in range(max(1, -(-tokens // BLOCK_TOKENS)))]
            transfer = Transfer(transfer_id, blocks, wrong)
            self._by_id[transfer_id] = transfer
            while len(self._by_id) > MAX_TRANSFERS:
                self._by_id.popitem(last=False)
            return transfer

    def get(self, transfer_id: str) -> Transfer | None:
        with self._lock:
            return self._by_id.get(transfer_id)


@dataclass
class VllmEngine:
    """What a simulated vLLM server is: arguments, model, faults and its KV side channel."""

    args: VllmArgs
    model_path: str
    version: str
    faults: set[str] = field(default_factory=set)
    component: str | None = None
    engine_id: str = field(default_factory=lambda: f"sim-{uuid.uuid4()}")
    bootstrap_port: int | None = None          # set once the producer's side channel is bound
    transfers: TransferBook = field(default_factory=TransferBook)
    kv_sender: handoff.KvSender | None = None      # a producer: writes KV through Mooncake
    kv_receiver: handoff.KvReceiver | None = None  # a consumer: has it written, verifies it

    @property
    def served_model(self) -> str:
        return self.args.served_model

    @property
    def is_producer(self) -> bool:
        return self.args.kv_role in ("kv_producer", "kv_both")

    @property
    def is_consumer(self) -> bool:
        return self.args.kv_role in ("kv_consumer", "kv_both")

    def dp_engine_ids(self) -> dict[str, dict[str, Any]]:
        """The bootstrap server's `/query` answer: one engine per data-parallel rank."""
        size = max(1, self.args.data_parallel_size)
        return {str(rank): {"engine_id": self.engine_id if size == 1
                            else f"{self.engine_id}-dp{rank}",
                            "role": self.args.kv_role, "simulated": True,
                            "http_port": self.args.port,
                            "tensor_parallel_size": self.args.tensor_parallel_size}
                for rank in range(size)}

    # --- the gate in front of every generation request ---

    def prepare(self, body: Mapping[str, Any], prompt: str
                ) -> tuple[api.Answer, dict[str, Any] | None]:
        """Check faults and PD wiring; returns the answer function and the response's
        kv_transfer_params. Raises ApiError when the server must refuse."""
        if "http-500" in self.faults:
            faults.played_once(self.component, "http-500", "answering HTTP 500")
            raise api.ApiError(500, "simulated fault http-500 (HARNESS_SIM_FAULTS)",
                               "InternalServerError")
        answer: api.Answer = answer_text
        if "wrong-answer" in self.faults:
            faults.played_once(self.component, "wrong-answer",
                               "answering wrongly" + (" (bad KV handed over)"
                                                      if self.is_producer else ""))
            answer = wrong_answer
        params = _kv_params(body)
        if self.args.kv_role is None:
            return answer, None  # no KV connector: vLLM ignores kv_transfer_params
        if params.get("do_remote_decode"):
            if not self.is_producer:
                raise api.ApiError(500, "this server is a kv_consumer and cannot prefill for a "
                                   "remote decode (kv_transfer_params.do_remote_decode=true): is "
                                   "the proxy's --prefill pointing at the decode server?",
                                   "InternalServerError")
            return answer, self._prefill_for_remote(params, prompt)
        if params.get("do_remote_prefill"):
            if not self.is_consumer:
                raise api.ApiError(500, "this server is a kv_producer and cannot load a remote "
                                   "KV cache (kv_transfer_params.do_remote_prefill=true): is "
                                   "the proxy's --decode pointing at the prefill server?",
                                   "InternalServerError")
            transfer = self._check_remote_prefill(params)
            self._receive_kv(params, prompt)
            return (wrong_answer if transfer.get("wrong") else answer), None
        if self.args.kv_role == "kv_consumer":
            raise api.ApiError(500, "kv_consumer got a request without kv_transfer_params."
                               "do_remote_prefill=true: send it through the disaggregated "
                               "prefill/decode proxy", "InternalServerError")
        return answer, None

    def _prefill_for_remote(self, params: Mapping[str, Any], prompt: str) -> dict[str, Any]:
        assert self.bootstrap_port is not None, "a producer binds its bootstrap port first"
        transfer_id = str(params.get("transfer_id") or f"xfer-{uuid.uuid4()}")
        transfer = self.transfers.record(transfer_id, count_tokens(prompt),
                                         wrong="wrong-answer" in self.faults)
        if self.kv_sender is not None:
            self.kv_sender.prompts.record(transfer_id, prompt)
        say(f"[harness-sim] prefilled {transfer_id} for a remote decode "
            f"({len(transfer.block_ids)} KV blocks held)")
        return {"do_remote_prefill": True, "do_remote_decode": False,
                "remote_engine_id": self.engine_id, "remote_block_ids": transfer.block_ids,
                "remote_host": advertised_host(self.args.host),
                "remote_port": self.bootstrap_port, "transfer_id": transfer_id,
                "tp_size": self.args.tensor_parallel_size}

    def _receive_kv(self, params: Mapping[str, Any], prompt: str) -> None:
        """The transfer's KV moves through Mooncake into this consumer, checked byte by byte."""
        if self.kv_receiver is None:
            return
        host, port = producer_address(params)
        try:
            self.kv_receiver.fetch(host, port, params.get("transfer_id"), prompt)
        except TransferError as exc:
            handoff.fail(exc)
            raise api.ApiError(500, str(exc), "InternalServerError") from None

    def _check_remote_prefill(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The producer that `params` names is live, is who it says, and prefilled this."""
        host, port = producer_address(params)
        where = f"{host}:{port}"
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        try:
            status, engines = get_json(http_url(host, port, "/query"))
        except (OSError, ValueError) as exc:
            raise api.ApiError(500, f"no live kv_producer at {where} (GET /query failed: "
                               f"{getattr(exc, 'reason', exc)})", "InternalServerError") from None
        if status != 200 or not isinstance(engines, dict) or not all(
                isinstance(e, dict) and "engine_id" in e for e in engines.values()):
            raise api.ApiError(500, f"something answers at {where}, but it is not a kv_producer's "
                               f"Mooncake bootstrap server (GET /query: HTTP {status})",
                               "InternalServerError")
        ids = [e["engine_id"] for e in engines.values()]
        wanted = params.get("remote_engine_id")
        if wanted is not None and wanted not in ids:
            raise api.ApiError(500, f"kv_producer at {where} runs engine {', '.join(ids)}, not "
                               f"remote_engine_id {wanted!r}", "InternalServerError")
        transfer_id = params.get("transfer_id")
        if not transfer_id:
            raise api.ApiError(500, "kv_transfer_params has no transfer_id: it names no request "
                               f"prefilled by the kv_producer at {where}", "InternalServerError")
        path = "/transfers/" + urllib.parse.quote(str(transfer_id), safe="")
        while True:  # a proxy may send prefill and decode at once: give the prefill a moment
            try:
                status, transfer = get_json(http_url(host, port, path))
            except (OSError, ValueError) as exc:
                raise api.ApiError(500, f"kv_producer at {where} went away (GET {path}: "
                                   f"{getattr(exc, 'reason', exc)})",
                                   "InternalServerError") from None
            if status == 200 and isinstance(transfer, dict):
                break
            if time.monotonic() >= deadline:
                raise api.ApiError(500, f"kv_producer at {where} never prefilled transfer "
                                   f"{transfer_id!r} (was the request sent to that prefill "
                                   "server first, with do_remote_decode=true?)",
                                   "InternalServerError")
            time.sleep(0.05)
        say(f"[harness-sim] loaded KV of {transfer_id} from kv_producer {where} "
            f"(engine {transfer.get('engine_id')}, blocks {transfer.get('block_ids')})")
        return transfer


# --- the producer's Mooncake bootstrap server (the side channel) --------------------------

class _BootstrapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BootstrapServer

    def do_GET(self) -> None:
        engine = self.server.engine
        path = self.path.split("?", 1)[0]
        status, body = 200, None
        if path == "/query":
            body = engine.dp_engine_ids()
        elif path == "/health":
            body = {"status": "ok", "role": BOOTSTRAP_ROLE, "engine_id": engine.engine_id,
                    "http_port": engine.args.port, "simulated": True}
        elif path.startswith("/transfers/"):
            transfer = engine.transfers.get(urllib.parse.unquote(path[len("/transfers/"):]))
            if transfer is not None:
                body = transfer.as_dict(engine.engine_id)
            else:
                status, body = 404, api.error_body(404, "unknown transfer", "NotFoundError")
        else:
            status, body = 404, api.error_body(404, f"Not Found: {path}", "NotFoundError")
        send_json(self, status, body)

    def do_POST(self) -> None:
        """POST /kv/transfer: a consumer asks for a transfer's KV (handoff.KvSender)."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sender = self.server.engine.kv_sender
        if self.path != TRANSFER_PATH or sender is None:
            status, answer = 404, api.error_body(404, f"Not Found: {self.path}", "NotFoundError")
        else:
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            status, answer = sender.handle(body if isinstance(body, dict) else {})
        send_json(self, status, answer)

    def log_message(self, format: str, *args: Any) -> None:
        say(f"INFO:     [mooncake-bootstrap] {self.client_address[0]} - {format % args}")


class BootstrapServer(QuietHTTPServer):
    """The kv_producer's Mooncake bootstrap server: `/query`, `/health`, `/transfers/<id>`."""

    def __init__(self, host: str, port: int, engine: VllmEngine) -> None:
        self.engine = engine
        super().__init__(host, port, _BootstrapHandler)


# --- the OpenAI HTTP server ---------------------------------------------------------------

_ROUTES = {
    ("GET", "/health"): "health", ("GET", "/ping"): "health", ("POST", "/ping"): "health",
    ("GET", "/version"): "version", ("GET", "/v1/models"): "models",
    ("POST", "/v1/chat/completions"): "chat", ("POST", "/v1/completions"): "completions",
}


class VllmHandler(EngineHandler):
    """The SGLang simulator's handler (body parsing, errors, SSE, access log) with vLLM's
    routes; responses carry `kv_transfer_params` as vLLM's do."""

    def _routes(self) -> dict[tuple[str, str], str]:
        return dict(_ROUTES)

    @property
    def vllm(self) -> VllmEngine:
        engine = self.server.engine
        assert isinstance(engine, VllmEngine)
        return engine

    def route_version(self, _raw: bytes) -> None:
        self._send_json(200, {"version": self.vllm.version})

    def route_models(self, _raw: bytes) -> None:
        listing = api.models_list(self.vllm.served_model, self.vllm.model_path)
        for model in listing["data"]:
            model["owned_by"] = "vllm"
            model["max_model_len"] = self.vllm.args.max_model_len or 32768
        self._send_json(200, listing)

    def route_chat(self, raw: bytes) -> None:
        body = self._json_object(raw)
        answer, kv_params = self.vllm.prepare(body, prompt_from_messages(body.get("messages")))
        result = api.chat_completion(body, answer, self.vllm.served_model)
        result["kv_transfer_params"] = kv_params
        self._send_chat(body, result)

    def route_completions(self, raw: bytes) -> None:
        body = self._json_object(raw)
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else " ".join(
            p for p in prompt or [] if isinstance(p, str))
        answer, kv_params = self.vllm.prepare(body, text)
        result = api.completion(body, answer, self.vllm.served_model)
        result["kv_transfer_params"] = kv_params
        self._send_stream([result]) if body.get("stream") else self._send_json(200, result)


class VllmServer(EngineServer):
    """The OpenAI listener of a VllmEngine; handlers reach it through `server.engine`."""

    handler_class = VllmHandler
