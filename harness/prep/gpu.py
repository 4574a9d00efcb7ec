"""GPU memory readings for the host reset between cases (SPEC §8, §9 "GPU").

One small interface, `GpuMemory`: `used_mb()` (one number per GPU) and `processes()` (the
processes holding GPU memory, PIDs in the host's view). Two sources:

- `NvidiaSmi(host)`: the real `nvidia-smi` queries, run through `host.run` (so the same code reads a
  remote host over SSH). No binary, a non-zero exit, or an answer that does not parse is a
  `GpuReadError`: a reset that cannot read the GPUs fails, it never passes.
- `SimGpu(host, directory)` (harness.prep.sim_gpu): where there is no GPU, the records the
  simulated engines write.

Around them: `wait_for_drain` (poll until every GPU is at or under a limit), `cgroup_processes`
(which PIDs a container owns: /proc/<pid>/cgroup names its id) and `kill_processes`. Which
processes a reset may kill is decided in harness.prep.reset.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from harness.errors import CommandFailed, HarnessError, tail
from harness.hosts.local import Completed
from harness.waiting import Cancel, wait_until

log = logging.getLogger(__name__)

LIMIT_MB = 1024
POLL_S = 0.5
SMI_TIMEOUT_S = 30
QUERY_GPUS = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
QUERY_APPS = ["nvidia-smi", "--query-compute-apps=pid,used_memory",
              "--format=csv,noheader,nounits"]


class GpuReadError(HarnessError):
    """GPU memory could not be read (no nvidia-smi, a failed query, an answer that won't parse)."""


@dataclass(frozen=True)
class GpuProcess:
    """A process holding GPU memory: its PID as the host sees it, and how much (None: N/A)."""
    pid: int
    used_mb: int | None = None

    def __str__(self) -> str:
        held = "? MB" if self.used_mb is None else f"{self.used_mb} MB"
        return f"pid {self.pid} ({held})"


@dataclass(frozen=True)
class GpuReading:
    """One reading: seconds since the wait began, and MB used per GPU (index order)."""
    at_s: float
    used_mb: tuple[int, ...]

    @property
    def max_mb(self) -> int:
        return max(self.used_mb, default=0)


class GpuMemory(Protocol):
    """Where GPU memory readings come from; either method raises GpuReadError when unreadable."""

    def used_mb(self) -> list[int]:
        """MB used on each GPU, in index order."""
        ...

    def processes(self) -> list[GpuProcess]:
        """Every process holding GPU memory, PIDs in the host's view."""
        ...


# --- nvidia-smi --------------------------------------------------------------------------------
def _fields(output: str, what: str) -> list[list[str]]:
    rows = []
    for line in output.splitlines():
        if line.strip():
            rows.append([part.strip() for part in line.split(",")])
    for row in rows:
        if len(row) != 2:
            raise GpuReadError(f"cannot read {what}: unexpected line {', '.join(row)[:120]!r} "
                               f"(expected 2 comma-separated fields)")
    return rows


def parse_used_mb(output: str) -> list[int]:
    """`index, memory.used` lines (csv,noheader,nounits) → MB per GPU in index order."""
    rows = _fields(output, "GPU memory")
    if not rows:
        raise GpuReadError("cannot read GPU memory: nvidia-smi listed no GPUs")
    used: dict[int, int] = {}
    for index, mb in rows:
        if not index.isdigit() or not mb.isdigit():
            raise GpuReadError(f"cannot read GPU memory: GPU {index!r} reports memory.used "
                               f"{mb!r}, not a number of MB")
        used[int(index)] = int(mb)
    return [used[i] for i in sorted(used)]


def parse_processes(output: str) -> list[GpuProcess]:
    """`pid, used_memory` lines → one GpuProcess per PID (MB summed over GPUs; N/A → None).

    No line at all is a valid answer: no process holds GPU memory.
    """
    if re.fullmatch(r"\s*no running (compute )?processes found\s*", output, re.IGNORECASE):
        return []
    held: dict[int, int | None] = {}
    for pid, mb in _fields(output, "GPU processes"):
        if not pid.isdigit():
            raise GpuReadError(f"cannot read GPU processes: pid {pid!r} is not a number")
        if mb.isdigit():
            before = held.get(int(pid))
            held[int(pid)] = int(mb) + (before or 0)
        elif re.fullmatch(r"\[?N/A\]?|\[Not Supported\]", mb, re.IGNORECASE):
            held.setdefault(int(pid), None)
        else:
            raise GpuReadError(f"cannot read GPU processes: pid {pid} reports used_memory "
                               f"{mb!r}, not a number of MB")
    return [GpuProcess(pid, mb) for pid, mb in sorted(held.items())]


class NvidiaSmi:
    """The real GPUs of `host`, read with nvidia-smi through `host.run`."""

    def __init__(self, host, timeout_s: float = SMI_TIMEOUT_S) -> None:
        self.host = host
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"NvidiaSmi({getattr(self.host, 'name', self.host)!r})"

    def _query(self, argv: list[str]) -> str:
        name = getattr(self.host, "name", "?")
        try:
            done: Completed = self.host.run(argv, timeout=self.timeout_s, check=False)
        except CommandFailed as exc:
            if exc.exit_code == 127:
                raise GpuReadError(f"cannot read GPU memory: nvidia-smi not found on host {name}",
                                   host=name, hint="a GPU host needs the NVIDIA driver's "
                                   "nvidia-smi on PATH") from None
            why = "timed out" if exc.exit_code is None else f"exited {exc.exit_code}"
            raise GpuReadError(f"cannot read GPU memory: nvidia-smi {why} on host {name}",
                               host=name, log_tail=exc.log_tail) from None
        if done.exit_code == 127:
            raise GpuReadError(f"cannot read GPU memory: nvidia-smi not found on host {name}",
                               host=name, hint="a GPU host needs the NVIDIA driver's "
                               "nvidia-smi on PATH")
        if not done.ok:
            raise GpuReadError(f"cannot read GPU memory: nvidia-smi exited {done.exit_code} on "
                               f"host {name}: {tail(done.output, 1)[:200]}", host=name,
                               log_tail=tail(done.output) or None)
        return done.output

    def used_mb(self) -> list[int]:
        return parse_used_mb(self._query(QUERY_GPUS))

    def processes(self) -> list[GpuProcess]:
        return parse_processes(self._query(QUERY_APPS))


# --- waiting -----------------------------------------------------------------------------------
@dataclass
class Drain:
    """What a drain wait saw: every reading, whether it ended at or under the limit, and when."""
    limit_mb: int
    timeout_s: float
    readings: list[GpuReading] = field(default_factory=list)
    drained: bool = False
    waited_s: float = 0.0

    @property
    def last(self) -> GpuReading | None:
        return self.readings[-1] if self.readings else None

    def describe(self) -> str:
        state = "drained" if self.drained else "still used"
        shown = format_used(self.last.used_mb, self.limit_mb) if self.last else "no reading"
        return f"{state} after {self.waited_s:.1f}s: {shown}"


def format_used(used: Sequence[int], limit_mb: int = LIMIT_MB) -> str:
    """`GPU 6: 8000 MB, GPU 7: 8000 MB (6 others <= 1024 MB)`; all under: `8 GPUs <= 1024 MB`."""
    over = [f"GPU {i}: {mb} MB" for i, mb in enumerate(used) if mb > limit_mb]
    rest = len(used) - len(over)
    if not over:
        return f"{rest} GPU{'s' if rest != 1 else ''} <= {limit_mb} MB (max {max(used, default=0)})"
    if rest:
        over.append(f"{rest} other{'s' if rest != 1 else ''} <= {limit_mb} MB")
    return ", ".join(over)


def wait_for_drain(source: GpuMemory, *, timeout_s: float, limit_mb: int = LIMIT_MB,
                   poll_s: float = POLL_S, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], object] | None = None,
                   cancel: "Cancel | threading.Event | None" = None, host: str = "") -> Drain:
    """Poll `source` until every GPU uses at most `limit_mb`, for at most `timeout_s`.

    Reads at least once, and once more at the deadline. A GpuReadError is raised as it comes:
    an unreadable GPU is never taken for an idle one. `cancel` set → Interrupted.
    """
    drain = Drain(limit_mb, timeout_s)

    def drained() -> tuple[bool, str]:
        used = tuple(source.used_mb())
        now = clock() - start
        drain.readings.append(GpuReading(round(now, 3), used))
        log.debug("GPU memory at %.1fs: %s", now, format_used(used, limit_mb))
        return max(used, default=0) <= limit_mb, format_used(used, limit_mb)

    start = clock()
    drain.drained, _, drain.waited_s = wait_until(
        drained, timeout_s=timeout_s, awaited=f"GPU memory to drain on {host or 'this host'}",
        cancel=cancel, poll_s=poll_s, clock=clock, sleep=sleep)
    return drain


# --- whose processes ---------------------------------------------------------------------------
def _read(host, path: str) -> str | None:
    try:
        return host.read_text(path)
    except (OSError, HarnessError):
        return None


def cgroup_processes(host, pids: Iterable[int], container_id: str) -> list[int]:
    """The PIDs whose /proc/<pid>/cgroup (read through `host`) names `container_id`.

    Vanished processes and unreadable files are not the container's. An id shorter than 12
    characters could match anything and is refused.
    """
    if len(container_id.strip()) < 12:
        raise HarnessError(f"refusing a cgroup check against container id {container_id!r}")
    owned = []
    for pid in pids:
        text = _read(host, f"/proc/{int(pid)}/cgroup")
        if text is not None and container_id in text:
            owned.append(int(pid))
    return owned


def kill_processes(host, pids: Sequence[int]) -> Completed | None:
    """SIGKILL `pids` on `host` (host view); ones already gone are fine."""
    if not pids:
        return None
    return host.run(["kill", "-KILL", *[str(int(p)) for p in pids]], timeout=SMI_TIMEOUT_S,
                    check=False)
