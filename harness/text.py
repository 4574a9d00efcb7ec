"""Text cut to fit a message: one place for how the harness shortens what it quotes."""
from __future__ import annotations

TAIL_LINES = 30


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def one_line(text: object, limit: int = 300) -> str:
    """`text` with its whitespace (newlines too) collapsed, cut at `limit` with an ellipsis."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def first_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of `text`, cut at `limit`."""
    lines = str(text or "").strip().splitlines()
    return (lines[0] if lines else "")[:limit]
