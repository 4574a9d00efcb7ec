"""The two ends of a PD KV handoff: the prefill's sender (behind its bootstrap server) and the
decode's receiver (before it answers). See kv_transfer for what moves and how it is checked.

Which Mooncake, and what happens without one, is decided once per server (harness_sim.mooncake):
with HARNESS_SIM_MOONCAKE=auto and no Mooncake the handoff stays in-process (the server said so
at start); with `required` the decode answers an error naming Mooncake; with `off` nothing moves.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from harness_sim import faults, mooncake
from harness_sim.console import say
from harness_sim.kv_transfer import (HANDOFF_TIMEOUT_S, ROOM_WAIT_S, TRANSFER_PATH,
                                     TransferError, Transport, bytes_per_token,
                                     first_difference, kv_bytes, kv_size, rate, start_transport)
from harness_sim.mooncake import Mooncake
from harness_sim.wiring import http_url, post_json

TAG = "[harness-sim]"


def start(environ: Mapping[str, str], host: str, where: str, send: bool, receive: bool
          ) -> tuple[KvSender | None, KvReceiver | None]:
    """A PD server's ends of the handoff: its TransferEngine started on `host` (or the reason
    it has none, said in its log), a sender when it prefills for others, a receiver when it
    decodes what others prefilled. Knobs were validated at start (mode_of, bytes_per_token)."""
    loaded = mooncake.current(environ)
    transport, why = start_transport(loaded, host)
    if transport is None:
        say(f"{TAG} {why}")
    sender = KvSender(transport, why, where, faults.active_faults("mooncake", environ=environ)
                      ) if send else None
    receiver = KvReceiver(loaded, transport, why, bytes_per_token(environ)) if receive else None
    return sender, receiver


def fail(exc: TransferError, what: str = "KV") -> None:
    """A receiver's failure, in the log the harness sums (harness/results/transfers.py)."""
    say(f"{TAG} MOONCAKE {what} FAILED: {exc}")


class RoomPrompts:
    """The prompt a prefill got for each bootstrap room (recent rooms only), to derive its KV."""

    def __init__(self, keep: int = 4096) -> None:
        self._prompts: dict[str, str] = {}
        self._changed = threading.Condition()
        self._keep = keep

    def record(self, rooms: Any, prompt: str) -> None:
        with self._changed:
            for room in rooms if isinstance(rooms, list) else [rooms]:
                if room is not None:
                    self._prompts[str(room)] = prompt
            while len(self._prompts) > self._keep:
                self._prompts.pop(next(iter(self._prompts)))
            self._changed.notify_all()

    def wait(self, room: str, timeout_s: float) -> str | None:
        with self._changed:
            self._changed.wait_for(lambda: room in self._prompts, timeout_s)
            return self._prompts.get(room)


class KvSender:
    """The prefill's end: writes a room's KV into the buffer a decode names (an encoder's: an
    image embedding into its language-only prefill's buffer)."""

    def __init__(self, transport: Transport | None, unavailable: str, where: str,
                 transfer_faults: set[str] | None = None) -> None:
        self.transport, self.unavailable, self.where = transport, unavailable, where
        self.faults = transfer_faults or set()   # HARNESS_SIM_FAULTS mooncake:corrupt/refuse
        self.prompts = RoomPrompts()

    def handle(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /kv/transfer {room, session, address, length} -> (HTTP status, JSON body)."""
        try:
            room, session = str(body["room"]), str(body["session"])
            address, length = int(body["address"]), int(body["length"])
        except (KeyError, TypeError, ValueError):
            return 400, _error(400, f"expected room, session, address, length; got {body!r}")
        if self.transport is None:
            return self.send("KV", room, "", session, address, length)
        prompt = self.prompts.wait(room, ROOM_WAIT_S)
        if prompt is None:
            return 404, _error(404, f"prefill {self.where} got no request for bootstrap_room "
                                    f"{room} within {ROOM_WAIT_S:g}s")
        return self.send("KV", room, prompt, session, address, length)

    def send(self, what: str, room: str, key: str, session: str, address: int, length: int
             ) -> tuple[int, dict[str, Any]]:
        """Write the bytes of (room, key) into the peer's buffer -> (HTTP status, JSON body)."""
        if self.transport is None:
            return 503, {**_error(503, f"{self.where} cannot move {what}: {self.unavailable}"),
                         "mooncake": False}
        data, session = self._play_faults(kv_bytes(room, key, length), session)
        try:
            seconds = self.transport.write(session, address, data)
        except TransferError as exc:
            say(f"{TAG} MOONCAKE {what} SEND FAILED room={room} to={session}: {exc}")
            return 502, _error(502, str(exc))
        say(f"{TAG} MOONCAKE {what} SENT bytes={length} transfer_s={seconds:.6f} "
            f"MiB/s={rate(length, seconds)} from={self.transport.session} to={session} "
            f"room={room}")
        return 200, {"from": self.transport.session, "bytes": length, "transfer_s": seconds}


    def _play_faults(self, data: bytes, session: str) -> tuple[bytes, str]:
        """mooncake:corrupt flips one byte of what is written; mooncake:refuse aims the write
        at a port of the decode's host where nothing listens, so Mooncake's own handshake is
        refused and transfer_sync_write fails as it does for a peer that is gone."""
        if "corrupt" in self.faults and data:
            where = len(data) // 2
            data = data[:where] + bytes([data[where] ^ 0xFF]) + data[where + 1:]
            faults.played_once("mooncake", "corrupt", f"flipping byte {where} of the KV this "
                               "prefill writes through Mooncake")
        if "refuse" in self.faults:
            session = f"{session.rpartition(':')[0]}:1"
            faults.played_once("mooncake", "refuse", f"writing the KV to {session}, where "
                               "nothing listens")
        return data, session


def _error(status: int, message: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "code": status}


class KvReceiver:
    """The decode's end: has the prefill write a request's KV into its buffer, then checks it."""

    def __init__(self, mooncake: Mooncake, transport: Transport | None, unavailable: str,
                 bytes_per_token: int) -> None:
        self.mooncake, self.transport, self.unavailable = mooncake, transport, unavailable
        self.bytes_per_token = bytes_per_token

    def fetch(self, host: str, port: int, room: Any, prompt: str) -> None:
        """Move and verify the KV of `room` from the prefill at host:port (its bootstrap
        server). TransferError (naming Mooncake) when that fails or is required and cannot be."""
        url = http_url(host, port, TRANSFER_PATH)
        self.receive("KV", str(room), prompt, kv_size(prompt, self.bytes_per_token),
                     lambda session, address, length: _ask(url, {
                         "room": str(room), "session": session, "address": address,
                         "length": length}),
                     peer=f"prefill {host}:{port}")

    def receive(self, what: str, room: str, key: str, size: int, ask: Any, peer: str
                ) -> dict[str, Any] | None:
        """Have `ask(session, address, length)` make the peer write the bytes of (room, key)
        into a fresh buffer of ours, then check them. Its answer; None when nothing moved
        through Mooncake (off, or auto without one: the handoff stays in-process)."""
        if self.mooncake.mode == "off":
            return None
        if self.transport is None:
            if self.mooncake.mode == "required":
                raise TransferError(f"Mooncake is required and cannot move the {what} of "
                                    f"room {room}: {self.unavailable}")
            return None  # auto: in-process handoff, said once at start
        started = time.monotonic()
        data, answer = self.transport.receive(size, ask)
        if answer.get("mooncake") is False and self.mooncake.mode == "auto":
            say(f"{TAG} MOONCAKE {what} in-process for room={room}: {answer.get('message')}")
            return answer
        if "from" not in answer:
            raise TransferError(f"Mooncake {what} transfer of room {room} from {peer} failed: "
                                f"{answer.get('message', answer)}")
        self._verify(what, room, key, data, answer, time.monotonic() - started)
        return answer

    def _verify(self, what: str, room: str, key: str, data: bytes, answer: Mapping[str, Any],
                handoff_s: float) -> None:
        assert self.transport is not None
        size, seconds = len(data), float(answer.get("transfer_s") or 0.0)
        wrong_at = first_difference(data, kv_bytes(room, key, size))
        say(f"{TAG} MOONCAKE {what} RECEIVED bytes={size} transfer_s={seconds:.6f} "
            f"MiB/s={rate(size, seconds)} from={answer['from']} to={self.transport.session} "
            f"room={room} handoff_s={handoff_s:.3f} "
            f"verified={'yes' if wrong_at is None else f'no (first wrong byte {wrong_at})'}")
        if wrong_at is not None:
            raise TransferError(f"Mooncake {what} transfer of room {room}: {size} bytes "
                                f"from {answer['from']} to {self.transport.session} arrived "
                                f"corrupted (first wrong byte at offset {wrong_at})")


def _ask(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST the transfer request to the prefill's bootstrap server; its JSON answer."""
    try:
        status, answer = post_json(url, body, timeout=HANDOFF_TIMEOUT_S)
    except OSError as exc:
        raise TransferError(f"Mooncake KV transfer: prefill bootstrap {url} did not answer: "
                            f"{getattr(exc, 'reason', exc)}") from None
    if not isinstance(answer, dict):
        answer = {"message": f"HTTP {status}: {answer!r}"}
    if status != 200 and "message" in answer:
        answer["message"] = f"HTTP {status}: {answer['message']}"
    return answer
