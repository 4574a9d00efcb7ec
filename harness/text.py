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


def human_bytes(count: int) -> str:
    """4096 -> "4 KiB", 67108864 -> "64 MiB", 1000 -> "1000 B": whole binary units only."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    return f"{count} B"
