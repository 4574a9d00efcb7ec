"""KV handoffs that move real bytes through Mooncake's TransferEngine (TCP, P2P handshake).

As in SGLang's Mooncake backend, the decode owns the destination: for each request it takes a
buffer from its TransferEngine, zeroes it, and tells the prefill's bootstrap server where it
is (`POST /kv/transfer` with its session `host:rpc_port`, the address and the length). The
prefill derives the request's KV bytes from the prompt it prefilled for that bootstrap room
and writes them into that buffer with `transfer_sync_write`. The decode then reads its buffer
and compares it with the bytes it derives from its own copy of the request, so a transfer
that did not happen, went to the wrong place or arrived damaged fails the request, with a
message naming Mooncake. Both sides log one `MOONCAKE KV ...` line per transfer with the
bytes moved and the throughput (the harness sums the decode's lines per case).
"""
from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from harness_sim.answers import count_tokens, prompt_from_messages
from harness_sim.console import say
from harness_sim.mooncake import Mooncake, quicken_accept_polls

TRANSFER_PATH = "/kv/transfer"
BYTES_ENV = "HARNESS_SIM_KV_BYTES_PER_TOKEN"
# Qwen2.5-7B's KV in bf16: 28 layers x (K, V) x 4 KV heads x 128 dims x 2 bytes per token.
DEFAULT_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2
MIN_TOKENS = 64           # a chat template alone is dozens of tokens; a few MiB per request
MAX_BYTES = 256 << 20     # one request's KV in a simulator; a bigger knob is a mistake
ROOM_WAIT_S = 5.0         # the router sends prefill and decode at once: wait for the prefill
HANDOFF_TIMEOUT_S = 30.0  # the decode's whole ask-and-wait for one transfer


class TransferError(Exception):
    """A KV handoff that failed; the message names Mooncake and says what went wrong."""


def bytes_per_token(environ: Mapping[str, str]) -> int:
    """HARNESS_SIM_KV_BYTES_PER_TOKEN: a whole number >= 1 (ValueError otherwise)."""
    raw = (environ.get(BYTES_ENV) or "").strip()
    if not raw:
        return DEFAULT_BYTES_PER_TOKEN
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"bad {BYTES_ENV} {raw!r}: expected a whole number of bytes >= 1 "
                         f"(default {DEFAULT_BYTES_PER_TOKEN}, Qwen2.5-7B in bf16)")
    return int(raw)


def request_prompt(body: Mapping[str, Any]) -> str:
    """The text a request asks about, the same on the prefill and the decode."""
    for name in ("text", "prompt"):
        value = body.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(map(str, value))
    return prompt_from_messages(body.get("messages"))


def kv_size(prompt: str, per_token: int) -> int:
    return min(max(count_tokens(prompt), MIN_TOKENS) * per_token, MAX_BYTES)


def kv_bytes(room: str, prompt: str, size: int) -> bytes:
    """The request's made-up KV: deterministic in (room, prompt), different for any other."""
    digest = hashlib.sha256(f"{room}\n{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big")).randbytes(size)


def first_difference(got: bytes, want: bytes) -> int | None:
    """Offset of the first byte that differs (None when equal), found in 64 KiB steps."""
    if got == want:
        return None
    step = 1 << 16
    for start in range(0, max(len(got), len(want)), step):
        if got[start:start + step] != want[start:start + step]:
            return start + next((i for i, (a, b) in enumerate(
                zip(got[start:start + step], want[start:start + step], strict=False))
                if a != b), min(len(got), len(want)) - start)
    return min(len(got), len(want))


def rate(size: int, seconds: float) -> str:
    mib_s = size / (1 << 20) / seconds if seconds > 0 else math.inf
    return f"{mib_s:.1f}"


class Transport:
    """This server's TransferEngine over TCP; its session is `host:rpc_port`."""

    def __init__(self, mooncake: Mooncake, host: str) -> None:
        engine = mooncake.engine_class()
        status = engine.initialize(host, "P2PHANDSHAKE", "tcp", "")
        if status != 0:
            raise TransferError(f"Mooncake TransferEngine.initialize({host!r}, 'P2PHANDSHAKE', "
                                f"'tcp') returned {status}")
        self.engine, self.host = engine, host
        self.session = f"{host}:{engine.get_rpc_port()}"
        self._lock = threading.Lock()  # the managed-buffer allocator is ours to serialise
        self._quick_to_stop()

    def _quick_to_stop(self) -> None:
        """Without this the engine's destructor holds the server's exit up to 1 s (see
        mooncake.quicken_accept_polls). The accept() its listener is already waiting in keeps
        the old 1 s: a probe of our own session (Mooncake's reachability check; it logs
        nothing) ends that wait, so a stop right after start is as quick."""
        quicken_accept_polls()
        probe = getattr(self.engine, "send_probe", None)  # builds before it: a slower stop
        if probe is None:
            return
        try:
            probe(self.session)
        except Exception:  # noqa: BLE001 (only the stop's speed depends on it)
            pass

    def _allocate(self, size: int) -> int:
        with self._lock:
            address = self.engine.allocate_managed_buffer(size)
        if not address:
            raise TransferError(f"Mooncake could not allocate a {size}-byte buffer on "
                                f"{self.session}")
        return address

    def _free(self, address: int, size: int) -> None:
        with self._lock:
            self.engine.free_managed_buffer(address, size)

    def write(self, target_session: str, remote_address: int, data: bytes) -> float:
        """Write `data` into the peer's buffer; returns the seconds the transfer took."""
        source = self._allocate(len(data))
        try:
            self.engine.write_bytes_to_buffer(source, data, len(data))
            started = time.monotonic()
            status = self.engine.transfer_sync_write(target_session, source, remote_address,
                                                     len(data))
            seconds = time.monotonic() - started
        finally:
            self._free(source, len(data))
        if status != 0:
            raise TransferError(f"Mooncake transfer_sync_write of {len(data)} bytes from "
                                f"{self.session} to {target_session} returned {status}")
        return seconds

    def receive(self, size: int, ask_peer: Any) -> tuple[bytes, Any]:
        """A zeroed buffer of `size` bytes, `ask_peer(session, address, size)` to fill it;
        returns what the buffer then holds and what ask_peer returned."""
        address = self._allocate(size)
        try:
            # Zeroed, so stale bytes of an earlier identical request can never pass for these.
            self.engine.write_bytes_to_buffer(address, bytes(size), size)
            answer = ask_peer(self.session, address, size)
            return self.engine.read_bytes_from_buffer(address, size), answer
        finally:
            self._free(address, size)


def start_transport(mooncake: Mooncake, host: str) -> tuple[Transport | None, str]:
    """(transport, "") when Mooncake loaded and its engine started, else (None, why not)."""
    if not mooncake.loaded:
        return None, mooncake.describe()
    try:
        transport = Transport(mooncake, host)
    except Exception as exc:  # noqa: BLE001 (a C++ exception surfaces as RuntimeError & co)
        return None, f"Mooncake TransferEngine did not start on {host}: {exc}"
    say(f"[harness-sim] {mooncake.describe()}; TransferEngine session {transport.session} "
        "(P2PHANDSHAKE, tcp)")
    return transport, ""
