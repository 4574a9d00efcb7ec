"""The simulated server's log: plain lines on stdout, flushed, like a real server's console.

The harness reads ready lines from the log file the server's stdout goes to, so every
line is flushed at once; a lock keeps lines from request threads whole.
"""
from __future__ import annotations

import sys
import threading

_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print one line to stdout and flush; a closed stdout is ignored (the log is best effort)."""
    with _LOCK:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
