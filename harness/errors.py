"""The harness's exceptions: one root, each subclass carrying what it needs to explain itself.

Every error prints as one line naming the step, host and server where they are known; `details()`
adds the log tail and a hint for the console and the case summary. Only the runner turns an
exception into a `Fail` result.
"""
from __future__ import annotations

import shlex
from typing import Sequence

from harness.text import TAIL_LINES, tail  # noqa: F401 - the errors' own names for them


class HarnessError(Exception):
    """Root of every error the harness raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        host: str | None = None,
        server: str | None = None,
        log_tail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.host = host
        self.server = server
        self.log_tail = log_tail
        self.hint = hint

    def where(self) -> str:
        parts = []
        if self.step:
            parts.append(f"step {self.step}")
        if self.host:
            parts.append(f"host {self.host}")
        if self.server:
            parts.append(f"server {self.server}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"[{where}] {self.message}" if where else self.message

    def details(self) -> str:
        """The one line, then the hint and the log tail where there are any."""
        out = [str(self)]
        if self.hint:
            out.append(f"hint: {self.hint}")
        if self.log_tail:
            out.append("--- last lines of the log ---")
            out.append(self.log_tail)
        return "\n".join(out)

    def at(self, *, step: str | None = None, host: str | None = None,
           server: str | None = None) -> "HarnessError":
        """Fill in where the error happened, keeping what is already known."""
        self.step = self.step or step
        self.host = self.host or host
        self.server = self.server or server
        return self


class SettingsError(HarnessError):
    """A setting, argument or settings file is not acceptable."""


class CommandFailed(HarnessError):
    """A command exited non-zero (shows argv, exit code and the output tail, as invoke does)."""

    def __init__(self, argv: Sequence[str], exit_code: int | None, output: str = "", **kw) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.output = output
        status = "timed out" if exit_code is None else f"exited {exit_code}"
        kw.setdefault("log_tail", tail(output) if output.strip() else None)
        super().__init__(f"command {status}: {shlex.join(self.argv)[:300]}", **kw)


class NotReady(HarnessError):
    """A server did not become ready: what was awaited, for how long, and why not."""

    def __init__(self, awaited: str, waited_s: float, last_error: str = "", **kw) -> None:
        self.awaited = awaited
        self.waited_s = waited_s
        self.last_error = last_error
        why = f" ({last_error})" if last_error else ""
        super().__init__(f"not ready after {waited_s:.1f}s waiting for {awaited}{why}", **kw)


class ServerExited(HarnessError):
    """A server process exited while we waited for it or while it should have been serving."""


class DockerError(HarnessError):
    """The Docker engine refused or failed an operation."""


class WheelError(HarnessError):
    """The Mooncake wheel could not be obtained."""


class CaseFailed(HarnessError):
    """A case ran to the end and its pass rule said no."""


class HostUnhealthy(HarnessError):
    """A host is not fit for the next case or model (its GPUs do not drain, or cannot be read):
    the environment's failure, not the case's."""


class Interrupted(HarnessError):
    """Ctrl-C or SIGTERM stopped the run."""


def close_quietly(*things: object) -> None:
    """Close each of `things` that is not None, in order; an error while closing is dropped:
    a cleanup path must not fail on it (and must go on closing the rest)."""
    for thing in things:
        if thing is not None:
            try:
                thing.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - see the docstring
                pass
