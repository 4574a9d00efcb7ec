"""Command words every host and node builds the same way: the `env K=V` prefix and the
`timeout -k` wrapper, with what its exit status means.
"""
from __future__ import annotations

from typing import Mapping, Sequence

# What `timeout` answers when the limit passed: 124 (TERM worked) or 137 (KILL after -k).
TIMED_OUT_CODES = (124, 137)


def with_env(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """`env K=V ... argv` (argv alone when there is nothing to set)."""
    words = [str(a) for a in argv]
    return ["env", *[f"{k}={v}" for k, v in env.items()], *words] if env else words


def with_timeout(argv: Sequence[str], seconds: float, kill_after_s: float) -> list[str]:
    """`timeout -k KILL_AFTER SECONDS argv`: TERM at the limit, KILL `kill_after_s` later."""
    return ["timeout", "-k", f"{kill_after_s:g}", f"{max(seconds, 0.001):g}", *map(str, argv)]


def timed_out(exit_code: int | None) -> bool:
    """Whether a command run under `with_timeout` was stopped by its limit."""
    return exit_code in TIMED_OUT_CODES
