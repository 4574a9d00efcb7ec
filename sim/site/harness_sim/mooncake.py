"""Which Mooncake the simulated engines move their bytes through, loaded once per process.

HARNESS_SIM_MOONCAKE picks what happens (the harness passes it; `required` also whenever
MOONCAKE_WHEEL names the wheel under test):

- `auto` (default): real transfers when `mooncake.engine` loads; when it cannot, KV handoffs
  stay in-process and every server says why, with the one line that turns transfers on;
- `required`: a Mooncake that cannot load fails every request that needs a transfer, with a
  message naming Mooncake (a pre-flight of a wheel must never pass without it);
- `off`: no transfers, said once at start.

Never a silent fallback: `describe()` is printed by every server that hands KV over.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODE_ENV = "HARNESS_SIM_MOONCAKE"
MODES = ("auto", "required", "off")
CPU_PACKAGE = "mooncake-transfer-engine-non-cuda"
CUDA_PACKAGE = "mooncake-transfer-engine"


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
