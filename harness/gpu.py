"""GPU memory readings for the host reset between cases (SPEC §8, §9 "GPU").

One small interface, `GpuMemory`: `used_mb()` (one number per GPU) and `processes()` (the
processes holding GPU memory, PIDs in the host's view). Two sources:

- `NvidiaSmi(host)`: the real `nvidia-smi` queries, run through `host.run` (so the same code reads a
  remote host over SSH). No binary, a non-zero exit, or an answer that does not parse is a
  `GpuReadError`: a reset that cannot read the GPUs fails, it never passes.
- `SimGpu(host, directory)`: where there is no GPU, the records the simulated engines write
  (sim/site/harness_sim/gpu.py). A record holds memory while its process lives, or for ever when
  it says `leak` (fault `gpu-leak`); its process is found in the host's view by PID namespace
  PID + start time, so the cgroup-scoped kill below treats it exactly like a real GPU process.

Around them: `wait_for_drain` (poll until every GPU is at or under a limit), `cgroup_processes`
(which PIDs a container owns: /proc/<pid>/cgroup names its id) and `kill_processes`. Which
processes a reset may kill is decided in harness.reset.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Iterable, Protocol, Sequence

from harness.errors import CommandFailed, HarnessError, tail
from harness.hosts import Completed, LocalHost
from harness.layout import Layout
from harness.waiting import Cancel, wait_until

log = logging.getLogger(__name__)

LIMIT_MB = 1024
POLL_S = 0.5
SMI_TIMEOUT_S = 30
QUERY_GPUS = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
QUERY_APPS = ["nvidia-smi", "--query-compute-apps=pid,used_memory",
              "--format=csv,noheader,nounits"]
SIM_GPU_ENV = "HARNESS_SIM_GPU_DIR"
SIM_GPU_COUNT = 8                       # the simulated host has 8 GPUs, as the H200 hosts do


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


# --- the simulated GPUs ------------------------------------------------------------------------
# Runs on the host (python3 there): reads every record, then finds each record's process in the
# host's view: the last NSpid entry (its PID in its own namespace) and its start time must match.
_SIM_SCAN = r"""
import json, os, sys
directory = sys.argv[1]
try:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
except FileNotFoundError:
    names = []
records = []
for name in names:
    try:
        with open(os.path.join(directory, name)) as fh:
            text = fh.read()
    except FileNotFoundError:
        continue
    records.append({"file": name, "text": text})
found = {}
if records:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                fields = fh.read().rpartition(") ")[2].split()
            with open("/proc/%s/status" % entry) as fh:
                nspid = [l.split()[-1] for l in fh if l.startswith("NSpid:")]
        except (OSError, IndexError):
            continue
        if fields[0] in ("Z", "X"):
            continue
        found["%s:%s" % (nspid[0] if nspid else entry, fields[19])] = int(entry)
print(json.dumps({"records": records, "found": found}))
"""


@dataclass(frozen=True)
class SimRecord:
    """One simulated engine's record, resolved: `host_pid` is None when its process is gone."""
    file: str
    pid: int
    starttime: int
    gpus: tuple[int, ...]
    mb_per_gpu: int
    leak: bool
    host_pid: int | None
    component: str | None = None

    @property
    def alive(self) -> bool:
        return self.host_pid is not None

    @property
    def holds(self) -> bool:
        return self.alive or self.leak


def parse_sim_scan(output: str) -> list[SimRecord]:
    """The scan's JSON → resolved records; a record that is not what the simulator writes is
    a GpuReadError naming its file."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
        raw_records, found = data["records"], data["found"]
    except (ValueError, IndexError, KeyError, TypeError):
        raise GpuReadError(f"cannot read the simulated GPU records: scan answered "
                           f"{tail(output, 3)[:200]!r}") from None
    records = []
    for raw in raw_records:
        try:
            rec = json.loads(raw["text"])
            pid, start = int(rec["pid"]), int(rec["starttime"])
            gpus = tuple(int(g) for g in rec["gpus"])
            mb = int(rec["mb_per_gpu"])
            leak = bool(rec.get("leak", False))
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuReadError(f"cannot read the simulated GPU record {raw.get('file')}: "
                               f"{type(exc).__name__}: {exc}") from None
        records.append(SimRecord(raw["file"], pid, start, gpus, mb, leak,
                                 found.get(f"{pid}:{start}"), rec.get("component")))
    return records


def sim_used_mb(records: Iterable[SimRecord], count: int = SIM_GPU_COUNT) -> list[int]:
    """MB per simulated GPU: every record that holds memory adds its share to its GPUs."""
    records = [r for r in records if r.holds]
    count = max([count, *(g + 1 for r in records for g in r.gpus)])
    used = [0] * count
    for rec in records:
        for gpu in rec.gpus:
            used[gpu] += rec.mb_per_gpu
    return used


def sim_processes(records: Iterable[SimRecord]) -> list[GpuProcess]:
    """The live processes among the records (a leaked record of a dead one has none to kill)."""
    return sorted((GpuProcess(r.host_pid, r.mb_per_gpu * len(r.gpus))
                   for r in records if r.host_pid is not None), key=lambda p: p.pid)


def sim_gpu_dir(layout: Layout) -> PurePosixPath:
    """Where simulated engines write their records, in `layout`'s view."""
    return layout.run / "sim-gpu"


def sim_gpu_env(layout: Layout) -> dict[str, str]:
    """The knob for what the harness starts on a node, in that node's view (`node.layout`)."""
    return {SIM_GPU_ENV: str(sim_gpu_dir(layout))}


class SimGpu:
    """The simulated GPUs of `host`: records under `directory` (host view), read via host.run."""

    def __init__(self, host, directory: object, count: int = SIM_GPU_COUNT,
                 python: str | None = None) -> None:
        self.host = host
        self.directory = str(directory)
        self.count = count
        # This machine: the harness's own interpreter (no PATH lookup per poll); else python3.
        self.python = python or (sys.executable if type(host) is LocalHost else "python3")

    def __repr__(self) -> str:
        return f"SimGpu({getattr(self.host, 'name', self.host)!r}, {self.directory!r})"

    def records(self) -> list[SimRecord]:
        name = getattr(self.host, "name", "?")
        try:
            done = self.host.run([self.python, "-I", "-c", _SIM_SCAN, self.directory],
                                 timeout=SMI_TIMEOUT_S, check=False)
        except CommandFailed as exc:
            raise GpuReadError(f"cannot read the simulated GPU records on host {name}: {exc}",
                               host=name) from None
        if not done.ok:
            raise GpuReadError(f"cannot read the simulated GPU records on host {name}: scan "
                               f"exited {done.exit_code}", host=name,
                               log_tail=tail(done.output) or None)
        return parse_sim_scan(done.output)

    def used_mb(self) -> list[int]:
        return sim_used_mb(self.records(), self.count)

    def processes(self) -> list[GpuProcess]:
        return sim_processes(self.records())

    def clear(self) -> None:
        """Forget every record (a new run starts with idle simulated GPUs)."""
        self.host.remove(self.directory)


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
