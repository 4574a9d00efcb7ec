"""EPD: the encoder's image embedding moves into the language-only prefill through Mooncake.

The prefill sizes the embedding from the images it sends (Qwen2.5-VL: one token per 28x28
pixels, [tokens, 3584] in bf16, so a photo is tens of MB), takes a buffer of that size from
its TransferEngine and names it in its `POST /encode`; the encoder writes the embedding's
bytes (derived from the request id and the images) into it and answers; the prefill checks
every byte (handoff.KvReceiver). Without a Mooncake the handoff stays in-process, as for KV.
"""
from __future__ import annotations

import hashlib
import uuid
from typing import Any

from harness_sim import api, handoff, images
from harness_sim.kv_transfer import TransferError
from harness_sim.wiring import post_json

ENCODE_TIMEOUT_S = 30.0  # tens of MB through TCP on a busy machine


def embedding_bytes(seen: list[dict[str, Any]]) -> int:
    tokens = sum(image.get("tokens", 1) for image in seen)
    return tokens * images.HIDDEN_SIZE * images.BYTES_PER_VALUE


def images_key(urls: list[str]) -> str:
    """What the embedding's bytes derive from, the same on both ends."""
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()


def ask_encoder(url: str, request: dict[str, Any]) -> dict[str, Any]:
    """POST /encode; its JSON answer (an error answer or none at all: ApiError)."""
    try:
        status, answer = post_json(url, request, timeout=ENCODE_TIMEOUT_S)
    except OSError as exc:
        raise api.ApiError(500, f"encoder {url} unreachable: {getattr(exc, 'reason', exc)}",
                           "InternalServerError") from None
    if status != 200 or not isinstance(answer, dict):
        detail = answer.get("message", answer) if isinstance(answer, dict) else answer
        raise api.ApiError(500, f"encoder {url} answered HTTP {status}: {detail}",
                           "InternalServerError")
    return answer


def fetch(receiver: handoff.KvReceiver | None, url: str, request: dict[str, Any]
          ) -> dict[str, Any]:
    """The encoder's answer to `request`; the embedding moved into `receiver` and checked
    when Mooncake can move it."""
    urls = list(request.get("images") or [])
    room = str(request.get("rid") or uuid.uuid4().hex)
    if receiver is not None:
        def ask(session: str, address: int, length: int) -> dict[str, Any]:
            return ask_encoder(url, {**request, "mooncake": {
                "room": room, "session": session, "address": address, "length": length}})
        try:
            answer = receiver.receive("EMBEDDING", room, images_key(urls),
                                      embedding_bytes(images.describe(urls)), ask,
                                      peer=f"encoder {url}")
        except TransferError as exc:
            handoff.fail(exc, "EMBEDDING")
            raise api.ApiError(500, str(exc), "InternalServerError") from None
        if answer is not None:
            return answer
    return ask_encoder(url, request)


def send(sender: handoff.KvSender | None, body: dict[str, Any]) -> dict[str, Any]:
    """The encoder's end: write the embedding where the prefill's request says; what to add
    to the /encode answer (nothing when the prefill asked for no transfer)."""
    spec = body.get("mooncake")
    if not isinstance(spec, dict):
        return {}
    if sender is None:
        return {"mooncake": False,
                "message": "this encoder moves nothing through Mooncake (HARNESS_SIM_MOONCAKE)"}
    try:
        room, session = str(spec["room"]), str(spec["session"])
        address, length = int(spec["address"]), int(spec["length"])
    except (KeyError, TypeError, ValueError):
        raise api.ApiError(400, f"bad mooncake transfer request {spec!r}") from None
    status, answer = sender.send("EMBEDDING", room, images_key(list(body.get("images") or [])),
                                 session, address, length)
    if status not in (200, 503):
        raise api.ApiError(status, str(answer.get("message")), "InternalServerError")
    return answer
