"""HiCache with `--hicache-storage-backend mooncake`: cache pages go through Mooncake's store.

A simulated server started with that flag joins the Mooncake master and HTTP metadata server
the payload started (MOONCAKE_MASTER, MOONCAKE_TE_META_DATA_SERVER, MOONCAKE_PROTOCOL), as
SGLang's Mooncake storage backend does. For every request it cuts the prompt into pages of
64 tokens (whitespace words) keyed by the hash of the prefix up to each page's end: a page the
store has is read back and compared with the bytes it must hold (its prefix's hit counts as
`cached_tokens`), a page it lacks is written. A flush of the server's own cache leaves the
store alone, so the same prompt after `/flush_cache` is served from pages that travelled
through Mooncake, checked byte by byte. Without a store that works: HARNESS_SIM_MOONCAKE
`auto` says so and caches nothing, `required` makes each request an error naming Mooncake.
"""
from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Mapping
from typing import Any

from harness_sim import faults, mooncake
from harness_sim.console import say
from harness_sim.kv_transfer import TransferError, kv_bytes, rate

TAG = "[harness-sim]"
PAGE_TOKENS = 64
PAGE_BYTES = PAGE_TOKENS * 4096   # 256 KiB a page: enough to see bytes move, light on RAM
SEGMENT_CAP = 256 << 20           # the payload asks for 4 GiB per server; a simulator needs less
LOCAL_BUFFER = 32 << 20


class PageStore:
    """Cache pages in a MooncakeDistributedStore, each checked when it is read back."""

    def __init__(self, store: Any, where: str, transfer_faults: set[str]) -> None:
        self.store, self.where, self.faults = store, where, transfer_faults

    def visit(self, prompt: str) -> int:
        """Read the prompt's pages the store has (checked), write the rest; cached tokens."""
        words, prefix = prompt.split(), hashlib.sha256()
        hit = written = 0
        started = time.monotonic()
        for start in range(0, len(words) - PAGE_TOKENS + 1, PAGE_TOKENS):
            prefix.update(" ".join(words[start:start + PAGE_TOKENS]).encode() + b"\n")
            key = f"harness-sim-hicache/{prefix.hexdigest()}"
            want = kv_bytes(key, "", PAGE_BYTES)
            if self.store.is_exist(key) == 1:
                got = self.store.get(key)
                if got != want:
                    raise TransferError(f"Mooncake store page {key} read back {len(got)} bytes "
                                        f"that differ from the {PAGE_BYTES} written")
                hit += 1 if hit == start // PAGE_TOKENS else 0  # a prefix of pages counts
                continue
            status = self.store.put(key, self._corrupted(want))
            if status != 0:
                raise TransferError(f"Mooncake store put of page {key} returned {status}")
            written += 1
        seconds = time.monotonic() - started
        moved = (hit + written) * PAGE_BYTES
        if hit or written:
            say(f"{TAG} MOONCAKE HICACHE pages_read={hit} pages_written={written} "
                f"bytes={moved} seconds={seconds:.6f} MiB/s={rate(moved, seconds)} "
                f"store={self.where} verified=yes")
        return hit * PAGE_TOKENS

    def _corrupted(self, data: bytes) -> bytes:
        if "corrupt" not in self.faults:
            return data
        faults.played_once("mooncake", "corrupt", "flipping a byte of every HiCache page this "
                           "server writes to the Mooncake store")
        return data[:1] + bytes([data[1] ^ 0xFF]) + data[2:]


_joined: list[Any] = []  # the stores this process joined


def store_joined() -> bool:
    """Whether this process holds a Mooncake store client (see sglang_main.main)."""
    return bool(_joined)


def start(environ: Mapping[str, str], host: str) -> tuple[PageStore | None, str]:
    """Join the store the payload started; (PageStore, "") or (None, why not)."""
    mode = mooncake.mode_of(environ)
    if mode == "off":
        return None, f"Mooncake off ({mooncake.MODE_ENV}=off): HiCache pages stay in-process"
    master = (environ.get("MOONCAKE_MASTER") or "").strip()
    metadata = (environ.get("MOONCAKE_TE_META_DATA_SERVER") or "").strip()
    if not master or not metadata:
        return None, ("Mooncake store not joined: MOONCAKE_MASTER and "
                      "MOONCAKE_TE_META_DATA_SERVER must name the master and metadata server")
    try:
        store = importlib.import_module("mooncake.store").MooncakeDistributedStore()
    except Exception as exc:  # noqa: BLE001 (ImportError, a missing libcuda, ...)
        loaded = mooncake.current(environ)
        return None, (f"Mooncake store cannot load: {type(exc).__name__}: {exc}; "
                      f"to move real bytes: {loaded.install_line}")
    segment = min(_size(environ.get("MOONCAKE_GLOBAL_SEGMENT_SIZE")), SEGMENT_CAP)
    protocol = environ.get("MOONCAKE_PROTOCOL") or "tcp"
    status = store.setup(host, metadata, segment, LOCAL_BUFFER, protocol,
                         environ.get("MOONCAKE_DEVICE") or "", master)
    if status != 0:
        return None, (f"Mooncake store setup against master {master} and metadata {metadata} "
                      f"returned {status} (is that the real mooncake_master?)")
    mooncake.quicken_accept_polls()  # the listener of the store's TransferEngine
    _joined.append(store)
    say(f"{TAG} Mooncake store joined: master {master}, metadata {metadata}, protocol "
        f"{protocol}, segment {segment >> 20} MiB (HiCache pages go through it)")
    return PageStore(store, master, faults.active_faults("mooncake", environ=environ)), ""


def _size(text: str | None) -> int:
    """MOONCAKE_GLOBAL_SEGMENT_SIZE as bytes (a number, or with a kb/mb/gb suffix)."""
    raw = (text or "").strip().lower().rstrip("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw) if raw else SEGMENT_CAP
    except ValueError:
        return SEGMENT_CAP
