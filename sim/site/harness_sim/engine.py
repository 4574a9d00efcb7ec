"""The HTTP server of a simulated SGLang engine: routes, PD checks and the answer faults."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from harness_sim import __version__, api, embedding, faults, handoff, images
from harness_sim.answers import WRONG, answer_text, has_image
from harness_sim.console import say
from harness_sim.handoff import KvReceiver, KvSender
from harness_sim.kv_transfer import TransferError, request_prompt
from harness_sim.sglang_args import DEFAULT_BOOTSTRAP_PORT, ServerArgs
from harness_sim.wiring import (KvLedger, QuietHTTPServer, handed_over_kv, http_url,
                                probe_bootstrap)

MAX_BODY = 64 * 1024 * 1024  # a base64 photo is a few MB; anything larger is a mistake


@dataclass
class Engine:
    """What a simulated server is: its arguments, the model it reports and its faults."""

    args: ServerArgs
    model_path: str                 # reported as model_path (a local tokenizer dir in sims)
    faults: set[str] = field(default_factory=set)
    component: str | None = None
    encoder_url: str | None = None  # the live encoder of a language-only prefill
    kv: KvLedger = field(default_factory=KvLedger)  # a prefill: the KV it hands over, per room
    kv_sender: KvSender | None = None      # a prefill: writes KV through Mooncake
    kv_receiver: KvReceiver | None = None  # a decode: has it written, then verifies it
    hicache: Any = None                    # hicache.PageStore: pages through Mooncake's store
    hicache_missing: str = ""              # why not, when HARNESS_SIM_MOONCAKE=required
    _request: threading.local = field(default_factory=threading.local)
    started: float = field(default_factory=time.time)

    @property
    def served_model(self) -> str:
        return self.args.served_model_name or self.args.model_path

    def answer(self, prompt: str) -> str:
        if "wrong-answer" in self.faults:
            faults.played_once(self.component, "wrong-answer", f"answering {WRONG!r}")
            return WRONG
        return answer_text(prompt)

    def refuse_if_failing(self) -> None:
        """The `http-500` fault: generation (and /encode) answer HTTP 500."""
        if "http-500" in self.faults:
            faults.played_once(self.component, "http-500", "answering HTTP 500")
            raise api.ApiError(500, "simulated fault http-500 (HARNESS_SIM_FAULTS)",
                               "InternalServerError")

    def server_info(self) -> dict[str, Any]:
        return {
            **self.args.as_dict(),
            "model_path": self.model_path,
            "tokenizer_path": self.args.tokenizer_path or self.model_path,
            "served_model_name": self.served_model,
            "version": __version__,
            "simulated": True,
            "simulator": "harness_sim (Mooncake E2E harness), not SGLang",
            "role": self.args.role,
            "component": self.component,
            "hicache_store": ("mooncake" if self.hicache is not None
                              else self.hicache_missing or None),
            "max_total_num_tokens": 65536,
            "internal_states": [{"last_gen_throughput": 0.0, "avg_spec_accept_length": None}],
        }

    def model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_path,
                "tokenizer_path": self.args.tokenizer_path or self.model_path,
                "is_generation": True, "preferred_sampling_params": None,
                "weight_version": "default", "has_image_understanding": True,
                "has_audio_understanding": False, "model_type": "simulated",
                "architectures": ["SimulatedForCausalLM"], "served_model_name": self.served_model}

    # --- gates in front of every generation request ---

    def check_generation(self, body: Mapping[str, Any], image: bool) -> api.Answer:
        """Raise ApiError when this server must refuse: a fault, or broken PD/EPD wiring.
        Returns how to answer: wrongly when the KV this decode loads is bad."""
        self.refuse_if_failing()
        self._visit_hicache(body)
        bad_kv = False
        if self.args.disaggregation_mode == "decode":
            bad_kv = self._check_bootstrap(body)
        bad_embedding = bool(image and self.encoder_url) and not self._encode(body)
        if self.args.disaggregation_mode == "prefill":
            self.kv.record(body.get("bootstrap_room"), bad=bad_embedding)
            if self.kv_sender is not None:
                self.kv_sender.prompts.record(body.get("bootstrap_room"), request_prompt(body))
        if bad_kv or bad_embedding:
            return lambda _prompt: WRONG
        return self.answer

    def _visit_hicache(self, body: Mapping[str, Any]) -> None:
        """The request's cache pages through the Mooncake store; its cached tokens kept for
        the answer (`cached_tokens`, what the HiCache payload reads after a flush)."""
        self._request.cached_tokens = 0
        if self.hicache_missing:
            raise api.ApiError(500, f"Mooncake is required for --hicache-storage-backend "
                               f"mooncake: {self.hicache_missing}", "InternalServerError")
        if self.hicache is not None:
            try:
                self._request.cached_tokens = self.hicache.visit(request_prompt(body))
            except TransferError as exc:
                handoff.fail(exc, "HICACHE")
                raise api.ApiError(500, str(exc), "InternalServerError") from None

    def cached_tokens(self) -> int:
        return getattr(self._request, "cached_tokens", 0)

    def _check_bootstrap(self, body: Mapping[str, Any]) -> bool:
        """Check the prefill this request names is live; True when it handed over bad KV."""
        hosts, ports, rooms = (body.get("bootstrap_host"), body.get("bootstrap_port"),
                               body.get("bootstrap_room"))
        if hosts is None or rooms is None:
            raise api.ApiError(500, "decode server got a request without bootstrap_host/"
                               "bootstrap_room: send it through the PD router "
                               "(sglang_router --pd-disaggregation)", "InternalServerError")
        host_list = hosts if isinstance(hosts, list) else [hosts]
        port_list = ports if isinstance(ports, list) else [ports] * len(host_list)
        for host, port in sorted(set(zip(map(str, host_list), port_list, strict=False)), key=str):
            try:
                port_number = DEFAULT_BOOTSTRAP_PORT if port is None else int(port)
            except (TypeError, ValueError):
                raise api.ApiError(400, f"bad bootstrap_port {port!r}") from None
            reason = probe_bootstrap(host, port_number)
            if reason:
                raise api.ApiError(500, f"no prefill bootstrap server at {host}:{port_number} "
                                   f"({reason})", "InternalServerError")
            # Logged so a PD failure can be read straight from the decode log.
            say(f"[harness-sim] prefill bootstrap {host}:{port_number} is live "
                f"(bootstrap_room {rooms})")
        room = rooms[0] if isinstance(rooms, list) and rooms else rooms
        numbers = [DEFAULT_BOOTSTRAP_PORT if port is None else int(port) for port in port_list]
        if self.kv_receiver is not None:
            try:
                self.kv_receiver.fetch(str(host_list[0]), numbers[0], room, request_prompt(body))
            except TransferError as exc:
                handoff.fail(exc)
                raise api.ApiError(500, str(exc), "InternalServerError") from None
        bad = any(handed_over_kv(host, port, room) == "bad"
                  for host, port in set(zip(map(str, host_list), numbers, strict=False)))
        if bad:
            say(f"[harness-sim] the KV handed over for bootstrap_room {rooms} is bad: answering "
                "wrongly")
        return bad

    def _encode(self, body: Mapping[str, Any]) -> bool:
        """Ask the encoder to embed this request's image; False when its embedding is wrong."""
        assert self.encoder_url
        url = f"{self.encoder_url}/encode"
        answer = embedding.fetch(self.kv_receiver, url, {
            "rid": body.get("rid"), "simulated": True, "images": images.image_urls(body)})
        say(f"[harness-sim] encoder {url} embedded {answer.get('image_tokens')} image "
            f"tokens (embedding {answer.get('embedding_shape')}, "
            f"{answer.get('embedding_bytes')} bytes to move)")
        return answer.get("embedding_ok") is not False

    def encode(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The encoder-only server's /encode: a small made-up embedding handle."""
        self.refuse_if_failing()
        wrong = "wrong-answer" in self.faults
        if wrong:
            faults.played_once(self.component, "wrong-answer",
                               "embedding the image wrongly (the answer will not see the cat)")
        seen = images.describe(body.get("images") or [])
        tokens = sum(image.get("tokens", 1) for image in seen)
        shape = [tokens, images.HIDDEN_SIZE]
        sizes = ", ".join(f"{i['width']}x{i['height']}" if "tokens" in i else "size unknown"
                          for i in seen) or "no image"
        say(f"[harness-sim] encode {sizes}: {tokens} image tokens, embedding {shape}")
        return {"simulated": True, "rid": body.get("rid"), "images": seen,
                "image_tokens": tokens, "embedding_shape": shape,
                "embedding_bytes": embedding.embedding_bytes(seen),
                "transfer_backend": self.args.encoder_transfer_backend,
                "embedding_ok": not wrong, **embedding.send(self.kv_sender, dict(body))}


# Routes: (method, path) -> handler method name. Encoder-only servers serve only a subset.
_COMMON_ROUTES = {
    ("GET", "/health"): "health", ("GET", "/health_generate"): "health_generate",
    ("GET", "/server_info"): "server_info", ("GET", "/get_server_info"): "server_info",
    ("GET", "/model_info"): "model_info", ("GET", "/get_model_info"): "model_info",
    ("GET", "/v1/models"): "models",
}
_ENGINE_ROUTES = {
    ("POST", "/generate"): "generate", ("PUT", "/generate"): "generate",
    ("POST", "/v1/chat/completions"): "chat", ("POST", "/v1/completions"): "completions",
    ("GET", "/get_load"): "get_load", ("POST", "/flush_cache"): "flush_cache",
    ("GET", "/flush_cache"): "flush_cache",
}
_ENCODER_ROUTES = {("POST", "/encode"): "encode"}


class EngineHandler(BaseHTTPRequestHandler):
    """One request; JSON in, JSON out; errors are OpenAI-style error objects."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the router's connection pool expects
    server: EngineServer

    # http.server dispatches on do_<METHOD>.
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def _routes(self) -> dict[tuple[str, str], str]:
        extra = _ENCODER_ROUTES if self.engine.args.encoder_only else _ENGINE_ROUTES
        return {**_COMMON_ROUTES, **extra}

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            raw = self._read_body()
            routes = self._routes()
            name = routes.get((method, path))
            if name is None:
                if any(p == path for _, p in routes):
                    raise api.ApiError(405, f"Method Not Allowed: {method} {path}",
                                       "MethodNotAllowed")
                raise api.ApiError(404, f"Not Found: {path}", "NotFoundError")
            getattr(self, f"route_{name}")(raw)
        except api.ApiError as exc:
            self._send_json(exc.status, api.error_body(exc.status, exc.message, exc.kind))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing left to answer
        except Exception as exc:  # noqa: BLE001 (a simulator bug must still answer)
            say(f"ERROR:    [harness-sim] {method} {path} failed: {exc!r}")
            self._send_json(500, api.error_body(500, f"simulator error: {exc!r}",
                                                "InternalServerError"))

    # --- body in, body out ---

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise api.ApiError(413, f"request body too large ({length} bytes)")
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _json_object(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw.decode("utf-8") if raw else "")
        except (ValueError, UnicodeDecodeError) as exc:
            raise api.ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise api.ApiError(400, "request body must be a JSON object")
        return body

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, body: Any) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json")

    def _send_stream(self, events: list[Any]) -> None:
        """A server-sent-events answer: every event, then [DONE]; the connection then closes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _send_chat(self, body: Mapping[str, Any], result: dict[str, Any]) -> None:
        """A chat completion, as stream chunks when the request asked for a stream."""
        if body.get("stream"):
            self._send_stream(api.chat_stream_chunks(result))
        else:
            self._send_json(200, result)

    # --- routes ---

    def route_health(self, _raw: bytes) -> None:
        self._send_bytes(200, b"", "text/plain")

    def route_health_generate(self, _raw: bytes) -> None:
        if "http-500" in self.engine.faults:
            raise api.ApiError(503, "simulated fault http-500: generation is failing",
                               "ServiceUnavailable")
        self._send_bytes(200, b"", "text/plain")

    def route_server_info(self, _raw: bytes) -> None:
        self._send_json(200, self.engine.server_info())

    def route_model_info(self, _raw: bytes) -> None:
        self._send_json(200, self.engine.model_info())

    def route_models(self, _raw: bytes) -> None:
        self._send_json(200, api.models_list(self.engine.served_model, self.engine.model_path))

    def route_get_load(self, _raw: bytes) -> None:
        self._send_json(200, [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0,
                               "num_tokens": 0}])

    def route_flush_cache(self, _raw: bytes) -> None:
        self._send_bytes(200, b"Cache flushed.\nPlease check backend logs for more details. "
                              b"(When there are running or waiting requests, the operation "
                              b"will not be performed.)\n", "text/plain")

    def route_encode(self, raw: bytes) -> None:
        self._send_json(200, self.engine.encode(self._json_object(raw) if raw else {}))

    def route_generate(self, raw: bytes) -> None:
        body = self._json_object(raw)
        answer = self.engine.check_generation(body, image=bool(body.get("image_data")))
        result = api.generate(body, answer)
        for one in result if isinstance(result, list) else [result]:
            one["meta_info"]["cached_tokens"] = self.engine.cached_tokens()
        if body.get("stream"):
            self._send_stream(result if isinstance(result, list) else [result])
        else:
            self._send_json(200, result)

    def route_chat(self, raw: bytes) -> None:
        body = self._json_object(raw)
        answer = self.engine.check_generation(body, image=has_image(body.get("messages")))
        result = api.chat_completion(body, answer, self.engine.served_model)
        self._send_chat(body, result)

    def route_completions(self, raw: bytes) -> None:
        body = self._json_object(raw)
        answer = self.engine.check_generation(body, image=False)
        result = api.completion(body, answer, self.engine.served_model)
        self._send_stream([result]) if body.get("stream") else self._send_json(200, result)

    # --- the access log, in uvicorn's shape ---

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        host, port = self.client_address[:2]
        if self.requestline.startswith("PRI * HTTP/2"):
            # The sglang-router opens with an HTTP/2 probe (is this a gRPC worker?), then
            # falls back to HTTP/1.1; say so rather than log a scary 505.
            say(f"INFO:     {host}:{port} - HTTP/2 probe refused (HTTP/1.1 only), as expected")
            return
        try:
            phrase = HTTPStatus(int(code)).phrase
        except ValueError:
            phrase = ""
        say(f'INFO:     {host}:{port} - "{self.requestline}" {code} {phrase}'.rstrip())

    def log_message(self, format: str, *args: Any) -> None:
        message = format % args
        if "Invalid HTTP version (2.0)" not in message:  # the router's probe, see log_request
            say(f"WARNING:  {self.client_address[0]} - {message}")


class EngineServer(QuietHTTPServer):
    """The engine's HTTP listener; handlers reach the Engine through `server.engine`."""

    handler_class: type[EngineHandler] = EngineHandler

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        super().__init__(engine.args.host, engine.args.port, self.handler_class)

    @property
    def url(self) -> str:
        return http_url(self.server_name, self.server_port)

