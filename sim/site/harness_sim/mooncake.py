"""Which Mooncake the simulated engines move their bytes through, loaded once per process.

HARNESS_SIM_MOONCAKE picks what happens (the harness passes it; `required` also whenever
MOONCAKE_WHEEL names the wheel under test):

- `auto` (default): real transfers when `mooncake.engine` loads; when it cannot, KV handoffs
  stay in-process and every server says why, with the one line that turns transfers on;
- `required`: a Mooncake that cannot load fails every request that needs a transfer, with a
  message naming Mooncake (a pre-flight of a wheel must never pass without it);
- `off`: no transfers, said once at start.

Never a silent fallback: `describe()` is printed by every server that hands KV over.
`quicken_accept_polls()` keeps a started engine from holding up the server's exit.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODE_ENV = "HARNESS_SIM_MOONCAKE"
MODES = ("auto", "required", "off")
CPU_PACKAGE = "mooncake-transfer-engine-non-cuda"
CUDA_PACKAGE = "mooncake-transfer-engine"
# How often a Mooncake handshake listener looks at its stop flag once quicken_accept_polls ran
# (the simulator's own servers poll as often: serving.serving).
ACCEPT_POLL_S = 0.05
_TIMEVAL = "@ll"  # struct timeval, as SO_RCVTIMEO takes and gives it


def mode_of(environ: Mapping[str, str]) -> str:
    """The validated HARNESS_SIM_MOONCAKE value (blank -> auto); anything else: ValueError."""
    raw = (environ.get(MODE_ENV) or "").strip().lower() or "auto"
    if raw not in MODES:
        raise ValueError(f"bad {MODE_ENV} {raw!r}: expected one of {', '.join(MODES)}")
    return raw


@dataclass(frozen=True)
class Mooncake:
    """The outcome of loading Mooncake in this process."""

    mode: str
    engine_class: Any = None   # mooncake.engine.TransferEngine once loaded
    package: str = ""          # the distribution that provides `mooncake`, if any
    version: str = ""
    path: str = ""
    error: str = ""            # why it did not load ("" when loaded or off)

    @property
    def loaded(self) -> bool:
        return self.engine_class is not None

    @property
    def install_line(self) -> str:
        """The one command that gives this machine a Mooncake that loads without a GPU."""
        if CUDA_PACKAGE in self.package.split(" + "):  # same `mooncake` package: it must go
            return f"pip uninstall -y {CUDA_PACKAGE} && pip install {CPU_PACKAGE}"
        return f"pip install {CPU_PACKAGE}"

    @property
    def which(self) -> str:
        """`package version at path`, or what little is known."""
        name = f"{self.package or 'mooncake'} {self.version}".strip()
        return f"{name} at {self.path}" if self.path else name

    def describe(self) -> str:
        """One line for the server log: what moves the bytes, or why nothing does."""
        if self.mode == "off":
            return f"Mooncake off ({MODE_ENV}=off): KV handoffs stay in-process"
        if self.loaded:
            return f"Mooncake loaded: {self.which} ({MODE_ENV}={self.mode})"
        consequence = ("KV handoffs stay in-process" if self.mode == "auto"
                       else "every request that hands KV over fails")
        return (f"Mooncake NOT loaded ({MODE_ENV}={self.mode}): {self.unavailable()}; "
                f"{consequence}; to move real bytes: {self.install_line}")

    def unavailable(self) -> str:
        """Why no transfer can happen (for an error answer): names Mooncake and the fix."""
        found = f"{self.which} is installed but " if self.package else ""
        return f"{found}cannot import mooncake.engine: {self.error}"


def _distribution() -> tuple[str, str]:
    """(distribution, version) that installed the `mooncake` package, ("", "") if none; both
    builds installed over each other show as `a + b` (their files are mixed: say so)."""
    try:
        names = importlib.metadata.packages_distributions().get("mooncake") or []
    except Exception:  # noqa: BLE001 (a broken metadata dir must not hide the real error)
        names = []
    found = []
    for name in dict.fromkeys(names):
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return (" + ".join(n for n, _ in found),
            " + ".join(v for _, v in found) if len({v for _, v in found}) > 1
            else (found[0][1] if found else ""))


def load(mode: str) -> Mooncake:
    """Import mooncake.engine (not when `off`) and say which build it is."""
    if mode == "off":
        return Mooncake(mode)
    package, version = _distribution()
    try:
        engine_module = importlib.import_module("mooncake.engine")
        engine_class = engine_module.TransferEngine
    except Exception as exc:  # noqa: BLE001 (ImportError, OSError from a missing libcuda, ...)
        text = " ".join(str(exc).split()) or "no detail"
        return Mooncake(mode, package=package, version=version,
                        error=f"{type(exc).__name__}: {text}")
    where = getattr(engine_module, "__file__", None)
    return Mooncake(mode, engine_class=engine_class, package=package, version=version,
                    path=os.path.dirname(os.path.abspath(where)) if where else "")


_loaded: dict[str, Mooncake] = {}


def current(environ: Mapping[str, str] | None = None) -> Mooncake:
    """This process's Mooncake, loaded on the first call (a bad mode: ValueError)."""
    mode = mode_of(os.environ if environ is None else environ)
    if mode not in _loaded:
        _loaded[mode] = load(mode)
    return _loaded[mode]


def quicken_accept_polls() -> int:
    """Shorten the accept() poll of Mooncake's handshake listeners to ACCEPT_POLL_S; how many.

    Call it once a TransferEngine (or a MooncakeDistributedStore, which holds one) has started.
    Its handshake listener (SocketHandShakePlugin) waits in accept() on a socket whose
    SO_RCVTIMEO is 1 s and checks its stop flag between waits; the engine's destructor clears
    that flag and joins the thread, so at exit every engine kept a stopped server alive for up
    to 1 s more. With a shorter receive timeout the same loop just polls more often; Mooncake
    gives each accepted connection its own timeout, so handshakes are unchanged. The sockets
    changed are this process's listening TCP sockets with a receive timeout longer than ours:
    the simulator's own servers set none. An accept() already waiting keeps its old timeout.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0  # not Linux: exits stay as slow as Mooncake makes them
    changed = 0
    for name in names:
        try:
            changed += _quicken(int(name))
        except OSError:
            continue  # not a socket, or closed meanwhile
    return changed


def _quicken(fd: int) -> int:
    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:  # a dup: fd stays
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return 0
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize(_TIMEVAL))
        seconds, micros = struct.unpack(_TIMEVAL, raw)
        if seconds + micros / 1e6 <= ACCEPT_POLL_S:
            return 0  # none (0: accept() blocks; nothing polls it) or already short
        poll = struct.pack(_TIMEVAL, 0, int(ACCEPT_POLL_S * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, poll)
        return 1
