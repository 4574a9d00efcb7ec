"""SIMULATOR -- not SGLang. The harness's imitation of the one name its pytest payloads and
the simulated test tree import from `sglang.srt.utils`: `kill_process_tree`.

The real function walks the tree with psutil and SIGKILLs it. This one has no psutil (the
simulated container has only the standard library and a few wheels), so it reads /proc:
SIGTERM to the process, its process group and every descendant, a bounded wait, then
SIGKILL for what is left. Simulated servers exit on SIGTERM, so their ports are free again
when this returns.
"""
from __future__ import annotations

import os
import signal
import time

# How long a stop may wait before killing (SPEC 3: TIMEOUT_STOP_S).
_STOP_WAIT_S = float(os.environ.get("TIMEOUT_STOP_S", "10"))


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    tree = _children_map()
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            state = stat_file.read().decode(errors="replace").rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _signal(pids: list[int], group: int | None, sig: int) -> None:
    if group is not None:
        try:
            os.killpg(group, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_process_tree(parent_pid: int, include_parent: bool = True, skip_pid: int | None = None,
                      wait_timeout: float | None = None) -> None:
    """Stop `parent_pid` (unless include_parent is False) and all its descendants."""
    if parent_pid is None:
        return
    parent_pid = int(parent_pid)
    pids = [p for p in _descendants(parent_pid) if p != skip_pid and p != os.getpid()]
    if include_parent:
        pids.append(parent_pid)
    group = None
    try:
        # Only signal the whole group when the parent leads its own (started in a new
        # session); never our own group.
        if include_parent and os.getpgid(parent_pid) == parent_pid != os.getpgid(0):
            group = parent_pid
    except OSError:
        pass
    _signal(pids, group, signal.SIGTERM)
    deadline = time.monotonic() + (wait_timeout if wait_timeout is not None else _STOP_WAIT_S)
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    leftover = [p for p in pids if _alive(p)]
    if leftover:
        _signal(leftover, group, signal.SIGKILL)


def is_port_available(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (the bind test SGLang's helper does too)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True
